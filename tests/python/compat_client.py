#!/usr/bin/env python3
"""The official Python `kubernetes` client against tessera.

Run by `crates/cli/tests/client_compat.rs` with KUBECONFIG pointing at an
admin kubeconfig. Every check asserts what kube-apiserver 1.32 answers (status
codes, reasons and messages as in shared/reference/errors). Prints one line per
check and a closing `N passed, M failed`; exits non-zero on any failure.
"""

import copy
import datetime
import json
import os
import sys
import traceback
import uuid

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "compat-" + uuid.uuid4().hex[:8]
UTC = datetime.timezone.utc

CFG = client.Configuration()
config.load_kube_config(config_file=os.environ["KUBECONFIG"], client_configuration=CFG)
API = client.ApiClient(CFG)
CORE = client.CoreV1Api(API)
RBAC = client.RbacAuthorizationV1Api(API)
AUTHN = client.AuthenticationV1Api(API)
AUTHZ = client.AuthorizationV1Api(API)
COORD = client.CoordinationV1Api(API)

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def eq(got, want, what=""):
    assert got == want, f"{what}: got {got!r}, want {want!r}"


def api_error(call, *args, **kwargs):
    """Runs a call that must fail; returns (ApiException, decoded Status body)."""
    try:
        call(*args, **kwargs)
    except ApiException as e:
        return e, json.loads(e.body)
    raise AssertionError(f"{call.__name__} succeeded, an ApiException was expected")


def expect_status(call, *args, status, http_reason, reason, message, details=None, **kwargs):
    e, body = api_error(call, *args, **kwargs)
    eq(e.status, status, "HTTP status")
    eq(e.reason, http_reason, "HTTP reason phrase")
    eq(body["kind"], "Status", "kind")
    eq(body["apiVersion"], "v1", "apiVersion")
    eq(body["status"], "Failure", "status")
    eq(body["reason"], reason, "reason")
    eq(body["code"], status, "code")
    eq(body["message"], message, "message")
    if details is not None:
        eq(body.get("details"), details, "details")
    return body


def raw(call, *args, **kwargs):
    """The undecoded JSON answer of a read, to check exact wire strings."""
    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data)


def configmap(name, labels=None, data=None):
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=data)


def micro(text):
    """A MicroTime string as a timezone-aware datetime."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


# --- checks -----------------------------------------------------------------


def test_configmap_crud_and_patches():
    created = CORE.create_namespaced_config_map(NS, configmap("crud", {"app": "compat"}, {"a": "1"}))
    eq(created.metadata.name, "crud")
    eq(created.metadata.namespace, NS)
    assert created.metadata.uid and created.metadata.resource_version, "uid and resourceVersion set"
    assert created.metadata.creation_timestamp is not None, "creationTimestamp set"

    read = CORE.read_namespaced_config_map("crud", NS)
    eq(read.data, {"a": "1"}, "read data")
    eq(read.metadata.resource_version, created.metadata.resource_version, "read resourceVersion")

    read.data["b"] = "2"
    replaced = CORE.replace_namespaced_config_map("crud", NS, read)
    eq(replaced.data, {"a": "1", "b": "2"}, "replaced data")
    assert replaced.metadata.resource_version != read.metadata.resource_version, "resourceVersion moves on update"

    merged = CORE.patch_namespaced_config_map("crud", NS, {"data": {"a": None, "c": "3"}}, _content_type=MERGE)
    eq(merged.data, {"b": "2", "c": "3"}, "merge patch")
    strategic = CORE.patch_namespaced_config_map(
        "crud", NS, {"metadata": {"labels": {"tier": "web"}}, "data": {"d": "4"}}, _content_type=STRATEGIC
    )
    eq(strategic.data, {"b": "2", "c": "3", "d": "4"}, "strategic patch")
    eq(strategic.metadata.labels, {"app": "compat", "tier": "web"}, "strategic patch labels")
    patched = CORE.patch_namespaced_config_map(
        "crud", NS, [{"op": "replace", "path": "/data/b", "value": "two"}, {"op": "remove", "path": "/data/c"}], _content_type=JSON_PATCH
    )
    eq(patched.data, {"b": "two", "d": "4"}, "json patch")

    # A failed JSON-patch test operation changes nothing.
    e, body = api_error(
        CORE.patch_namespaced_config_map, "crud", NS, [{"op": "test", "path": "/data/b", "value": "nope"}], _content_type=JSON_PATCH
    )
    eq(e.status, 422, "failed json-patch test")
    eq(body["reason"], "Invalid", "failed json-patch test reason")
    eq(CORE.read_namespaced_config_map("crud", NS).data, {"b": "two", "d": "4"}, "unchanged after failed patch")

    # kube answers this DELETE with a Status (ConfigMaps do not return the
    # deleted object); that answer's shape belongs to the deletion work, so
    # this suite checks the effect.
    # kube answers the delete of a ConfigMap with a Success Status, not the object.
    gone = CORE.delete_namespaced_config_map("crud", NS, _preload_content=False)
    gone = json.loads(gone.data)
    uid = gone["details"].pop("uid")
    assert uid, gone
    eq(gone, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
              "details": {"name": "crud", "kind": "configmaps"}}, "delete answer")
    expect_status(
        CORE.read_namespaced_config_map, "crud", NS,
        status=404, http_reason="Not Found", reason="NotFound",
        message='configmaps "crud" not found', details={"name": "crud", "kind": "configmaps"},
    )


def test_list_label_selectors_and_paging():
    for i in range(5):
        CORE.create_namespaced_config_map(NS, configmap(f"page-{i}", {"set": "paging", "parity": "even" if i % 2 == 0 else "odd"}))
    names = lambda items: [o.metadata.name for o in items]  # noqa: E731
    even = CORE.list_namespaced_config_map(NS, label_selector="set=paging,parity=even")
    eq(names(even.items), ["page-0", "page-2", "page-4"], "equality selector")
    odd = CORE.list_namespaced_config_map(NS, label_selector="set=paging,parity notin (even)")
    eq(names(odd.items), ["page-1", "page-3"], "set-based selector")
    eq(names(CORE.list_namespaced_config_map(NS, label_selector="set=paging,!parity").items), [], "absence selector")

    seen, token, pages = [], None, 0
    while True:
        page = CORE.list_namespaced_config_map(NS, label_selector="set=paging", limit=2, _continue=token)
        pages += 1
        seen += names(page.items)
        token = page.metadata._continue
        if not token:
            eq(page.metadata.remaining_item_count, None, "no remainingItemCount on the last page")
            break
        assert len(page.items) == 2, f"full page before the end: {names(page.items)}"
    eq(seen, [f"page-{i}" for i in range(5)], "paged names")
    eq(pages, 3, "pages")

    # remainingItemCount only without selectors (with one, kube cannot know it).
    eq(CORE.list_namespaced_config_map(NS, label_selector="set=paging", limit=2).metadata.remaining_item_count, None, "no count with a selector")
    # Without a selector kube also counts the rest.
    total = len(CORE.list_namespaced_config_map(NS).items)
    eq(CORE.list_namespaced_config_map(NS, limit=2).metadata.remaining_item_count, total - 2, "remainingItemCount")

    # kube's wording up to the JSON decoder's own error text (Go's and serde's
    # differ; the exact continue-token strings are checked in registry/read.rs).
    e, body = api_error(CORE.list_namespaced_config_map, NS, _continue="not-a-token")
    eq((e.status, e.reason, body["reason"]), (400, "Bad Request", "BadRequest"), "bad continue token")
    assert body["message"].startswith("invalid continue token: continue key is not valid: "), body["message"]
    assert "base64" not in body["message"], f"Go's RawURLEncoding decodes {'not-a-token'!r}: {body['message']}"
    CORE.delete_collection_namespaced_config_map(NS, label_selector="set=paging")
    eq(CORE.list_namespaced_config_map(NS, label_selector="set=paging").items, [], "deletecollection")


def test_watch_added_modified_deleted():
    rv = CORE.list_namespaced_config_map(NS).metadata.resource_version
    CORE.create_namespaced_config_map(NS, configmap("watched", {"w": "1"}, {"k": "v1"}))
    CORE.patch_namespaced_config_map("watched", NS, {"data": {"k": "v2"}}, _content_type=MERGE)
    CORE.delete_namespaced_config_map("watched", NS)
    events = []
    w = watch.Watch()
    for event in w.stream(CORE.list_namespaced_config_map, NS, label_selector="w=1", resource_version=rv, timeout_seconds=10):
        events.append((event["type"], event["object"].metadata.name, (event["object"].data or {}).get("k")))
        if event["type"] == "DELETED":
            w.stop()
    eq(events, [("ADDED", "watched", "v1"), ("MODIFIED", "watched", "v2"), ("DELETED", "watched", "v2")], "watch events")


def test_service_account_token_and_token_review():
    CORE.create_namespaced_service_account(NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="robot")))
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=["compat"], expiration_seconds=600))
    token = CORE.create_namespaced_service_account_token("robot", NS, request)
    eq(token.spec.audiences, ["compat"], "TokenRequest audiences")
    eq(token.spec.expiration_seconds, 600, "TokenRequest expirationSeconds")
    assert token.status.token.count(".") == 2, "a JWT"
    lifetime = token.status.expiration_timestamp - datetime.datetime.now(UTC)
    assert 590 <= lifetime.total_seconds() <= 601, f"expirationTimestamp ~600 s ahead: {lifetime}"

    review = AUTHN.create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token.status.token, audiences=["compat"]))
    )
    eq(review.status.authenticated, True, "authenticated")
    eq(review.status.user.username, f"system:serviceaccount:{NS}:robot", "username")
    eq(review.status.user.groups, ["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"], "groups")
    eq(review.status.audiences, ["compat"], "audiences")
    sa = CORE.read_namespaced_service_account("robot", NS)
    eq(review.status.user.uid, sa.metadata.uid, "uid")

    wrong = AUTHN.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token.status.token, audiences=["other"])))
    eq(wrong.status.authenticated, None, "wrong audience not authenticated")
    eq(wrong.status.error, "[invalid bearer token, token audiences [\"compat\"] is invalid for the target audiences [\"other\"]]", "wrong audience error")

    garbage = AUTHN.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token="garbage.token.here", audiences=["data-store"])))
    eq(garbage.status.error, "invalid bearer token", "garbage token error")
    eq(garbage.status.authenticated, None, "garbage not authenticated")

    short = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=["compat"], expiration_seconds=300))
    body = expect_status(
        CORE.create_namespaced_service_account_token, "robot", NS, short,
        status=422, http_reason="Unprocessable Entity", reason="Invalid",
        message='TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes',
    )
    eq(body["details"]["causes"], [{"reason": "FieldValueInvalid", "message": "Invalid value: 300: may not specify a duration less than 10 minutes", "field": "spec.expirationSeconds"}], "causes")


def test_subject_access_review_and_rbac():
    role = client.V1Role(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])],
    )
    RBAC.create_namespaced_role(NS, role)
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"),
        subjects=[client.RbacV1Subject(kind="User", name="jane", api_group="rbac.authorization.k8s.io")],
    )
    RBAC.create_namespaced_role_binding(NS, binding)
    eq([r.metadata.name for r in RBAC.list_namespaced_role(NS).items], ["cm-reader"], "roles")

    def sar(verb, resource, namespace=NS, user="jane"):
        spec = client.V1SubjectAccessReviewSpec(
            user=user, resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb=verb, resource=resource)
        )
        return AUTHZ.create_subject_access_review(client.V1SubjectAccessReview(spec=spec)).status

    allowed = sar("list", "configmaps")
    eq(allowed.allowed, True, "allowed")
    eq(allowed.reason, f'RBAC: allowed by RoleBinding "cm-reader/{NS}" of Role "cm-reader" to User "jane"', "allow reason")
    denied = sar("list", "pods", namespace="default")
    eq((denied.allowed, denied.reason, denied.denied), (False, None, None), "denied (as sar-denied.json)")

    spec = client.V1SubjectAccessReviewSpec(user="jane", non_resource_attributes=client.V1NonResourceAttributes(path="/healthz", verb="get"))
    nonres = AUTHZ.create_subject_access_review(client.V1SubjectAccessReview(spec=spec)).status
    eq((nonres.allowed, nonres.reason), (False, None), "non-resource, no groups (as sar-nonresource.json)")


def test_errors_match_kube_apiserver():
    expect_status(
        CORE.read_namespaced_service_account, "nope", NS,
        status=404, http_reason="Not Found", reason="NotFound",
        message='serviceaccounts "nope" not found', details={"name": "nope", "kind": "serviceaccounts"},
    )
    CORE.create_namespaced_service_account(NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="api")))
    expect_status(
        CORE.create_namespaced_service_account, NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="api")),
        status=409, http_reason="Conflict", reason="AlreadyExists",
        message='serviceaccounts "api" already exists', details={"name": "api", "kind": "serviceaccounts"},
    )
    stale = CORE.read_namespaced_service_account("api", NS)
    fresh = copy.deepcopy(stale)
    fresh.metadata.labels = {"v": "1"}
    CORE.replace_namespaced_service_account("api", NS, fresh)
    stale.metadata.labels = {"v": "stale"}
    expect_status(
        CORE.replace_namespaced_service_account, "api", NS, stale,
        status=409, http_reason="Conflict", reason="Conflict",
        message='Operation cannot be fulfilled on serviceaccounts "api": the object has been modified; please apply your changes to the latest version and try again',
        details={"name": "api", "kind": "serviceaccounts"},
    )
    eq(CORE.read_namespaced_service_account("api", NS).metadata.labels, {"v": "1"}, "stale update changed nothing")
    # ServiceAccounts are one of the kinds whose DELETE answers with the object.
    deleted = CORE.delete_namespaced_service_account("api", NS)
    eq((deleted.kind, deleted.metadata.name, deleted.metadata.labels), ("ServiceAccount", "api", {"v": "1"}), "deleted ServiceAccount")

    pattern = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    invalid = (
        "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
        f"'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{pattern}')"
    )
    expect_status(
        CORE.create_namespaced_service_account, NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="Bad_Name")),
        status=422, http_reason="Unprocessable Entity", reason="Invalid",
        message=f'ServiceAccount "Bad_Name" is invalid: metadata.name: {invalid}',
        details={"name": "Bad_Name", "kind": "ServiceAccount", "causes": [{"reason": "FieldValueInvalid", "message": invalid, "field": "metadata.name"}]},
    )
    expect_status(
        CORE.read_namespace, "no-such-namespace",
        status=404, http_reason="Not Found", reason="NotFound",
        message='namespaces "no-such-namespace" not found', details={"name": "no-such-namespace", "kind": "namespaces"},
    )


def test_service_account_identity_is_refused_and_unauthorized():
    CORE.create_namespaced_service_account(NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="limited")))
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = CORE.create_namespaced_service_account_token("limited", NS, request).status.token

    def as_bearer(bearer):
        cfg = copy.deepcopy(CFG)
        cfg.cert_file = cfg.key_file = None
        cfg.api_key = {"BearerToken": bearer}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return client.CoreV1Api(client.ApiClient(cfg))

    expect_status(
        as_bearer(token).list_namespaced_secret, "kube-system",
        status=403, http_reason="Forbidden", reason="Forbidden",
        message=f'secrets is forbidden: User "system:serviceaccount:{NS}:limited" cannot list resource "secrets" in API group "" in the namespace "kube-system"',
        details={"kind": "secrets"},
    )
    expect_status(
        as_bearer("garbage").list_namespaced_secret, "kube-system",
        status=401, http_reason="Unauthorized", reason="Unauthorized", message="Unauthorized",
    )


def lease(name, holder, renew, acquire=None, duration=15, transitions=0):
    spec = client.V1LeaseSpec(
        holder_identity=holder, lease_duration_seconds=duration, acquire_time=acquire or renew, renew_time=renew, lease_transitions=transitions
    )
    return client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=spec)


def test_lease_crud_microtime_and_transitions():
    acquired = micro("2026-12-05T10:00:00.123456Z")
    created = COORD.create_namespaced_lease(NS, lease("leader", "a", acquired))
    eq(created.spec.holder_identity, "a", "holderIdentity")
    eq(created.spec.lease_duration_seconds, 15, "leaseDurationSeconds")
    eq(created.spec.acquire_time, acquired, "acquireTime keeps microseconds")
    eq(created.spec.lease_transitions, 0, "leaseTransitions")
    # The Python client sends `+00:00`; kube stores and answers MicroTime in UTC with `Z`.
    wire = raw(COORD.read_namespaced_lease, "leader", NS)["spec"]
    eq(wire, {
        "holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": "2026-12-05T10:00:00.123456Z",
        "renewTime": "2026-12-05T10:00:00.123456Z", "leaseTransitions": 0,
    }, "lease spec on the wire")

    # Renew: GET + PUT with the resourceVersion, as client-go's LeaderElector does.
    current = COORD.read_namespaced_lease("leader", NS)
    current.spec.renew_time = micro("2026-12-05T10:00:05.000001Z")
    renewed = COORD.replace_namespaced_lease("leader", NS, current)
    eq(renewed.spec.renew_time, micro("2026-12-05T10:00:05.000001Z"), "renewTime")
    eq(raw(COORD.read_namespaced_lease, "leader", NS)["spec"]["renewTime"], "2026-12-05T10:00:05.000001Z", "renewTime on the wire")

    # A contender holding the old resourceVersion loses, with kube's conflict.
    current.spec.holder_identity = "b"
    expect_status(
        COORD.replace_namespaced_lease, "leader", NS, current,
        status=409, http_reason="Conflict", reason="Conflict",
        message='Operation cannot be fulfilled on leases.coordination.k8s.io "leader": the object has been modified; please apply your changes to the latest version and try again',
        details={"name": "leader", "group": "coordination.k8s.io", "kind": "leases"},
    )

    # Leases refuse an update without a resourceVersion (no blind overwrite).
    blind = COORD.read_namespaced_lease("leader", NS)
    blind.metadata.resource_version = None
    blind.spec.holder_identity = "blind"
    body = expect_status(
        COORD.replace_namespaced_lease, "leader", NS, blind,
        status=422, http_reason="Unprocessable Entity", reason="Invalid",
        message='leases.coordination.k8s.io "leader" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update',
    )
    eq(body["details"], {"name": "leader", "group": "coordination.k8s.io", "kind": "leases", "causes": [
        {"reason": "FieldValueInvalid", "message": "Invalid value: 0x0: must be specified for an update", "field": "metadata.resourceVersion"}]}, "details")

    # Take-over after expiry: new holder, acquireTime, transitions + 1.
    latest = COORD.read_namespaced_lease("leader", NS)
    eq(latest.spec.holder_identity, "a", "holder unchanged by the lost race")
    latest.spec.holder_identity = "b"
    latest.spec.acquire_time = latest.spec.renew_time = micro("2026-12-05T10:00:30.654321Z")
    latest.spec.lease_transitions += 1
    taken = COORD.replace_namespaced_lease("leader", NS, latest)
    eq((taken.spec.holder_identity, taken.spec.lease_transitions), ("b", 1), "take-over")

    # A MicroTime written as a string round-trips exactly.
    COORD.patch_namespaced_lease("leader", NS, {"spec": {"renewTime": "2026-12-05T10:00:31.000010Z"}}, _content_type=MERGE)
    eq(raw(COORD.read_namespaced_lease, "leader", NS)["spec"]["renewTime"], "2026-12-05T10:00:31.000010Z", "patched renewTime")

    eq([l.metadata.name for l in COORD.list_namespaced_lease(NS).items], ["leader"], "list leases")
    body = expect_status(
        COORD.patch_namespaced_lease, "leader", NS, {"spec": {"leaseDurationSeconds": 0}}, _content_type=MERGE,
        status=422, http_reason="Unprocessable Entity", reason="Invalid",
        message='Lease.coordination.k8s.io "leader" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0',
    )
    eq(body["details"]["group"], "coordination.k8s.io", "details.group")
    COORD.delete_namespaced_lease("leader", NS)
    expect_status(
        COORD.read_namespaced_lease, "leader", NS,
        status=404, http_reason="Not Found", reason="NotFound",
        message='leases.coordination.k8s.io "leader" not found',
        details={"name": "leader", "group": "coordination.k8s.io", "kind": "leases"},
    )


CHECKS = [value for name, value in list(globals().items()) if name.startswith("test_")]


def main():
    CORE.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    passed = failed = 0
    try:
        for check in CHECKS:
            try:
                check()
            except Exception:  # noqa: BLE001 - every failure is reported, then counted
                failed += 1
                print(f"FAIL {check.__name__}\n{traceback.format_exc()}", flush=True)
            else:
                passed += 1
                print(f"ok   {check.__name__}", flush=True)
    finally:
        CORE.delete_namespace(NS)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
