#!/usr/bin/env python3
"""Writes the policy fixture of issue 16's benchmark as one JSON List on stdout.

The same objects as `crates/policy/benches/evaluate.rs` (keep them in step):
namespace NS (default `bench`), pods labelled `app: backend` with ports
8001-8049 and 8080; Servers `srv-00`..`srv-48` (ports 8001-8049) and `web`
(8080), each with ten authorizations in compiled order: three
ServerAuthorizations, four AuthorizationPolicies with a MeshTLSAuthentication,
two with a NetworkAuthentication, and `S-zz` (MeshTLS + network; for `web` the
one that lets CLIENT in: the request is decided by the last authorization).
Five HTTPRoutes are attached to `srv-00`..`srv-04`. 50 Servers, 500
authorizations.

    scripts/policy-fixture.py [NS] [CLIENT_IDENTITY] | kubectl apply -f -
"""
import json
import sys

NS = sys.argv[1] if len(sys.argv) > 1 else "bench"
CLIENT = sys.argv[2] if len(sys.argv) > 2 else f"client.{NS}.serviceaccount.identity.linkerd.cluster.local"
ID = "serviceaccount.identity.linkerd.cluster.local"


def meta(name):
    return {"name": name, "namespace": NS}


def server_ref(name):
    return {"group": "policy.linkerd.io", "kind": "Server", "name": name}


def authn_ref(kind, name):
    return {"group": "policy.linkerd.io", "kind": kind, "name": name}


def obj(version, kind, name, spec):
    return {"apiVersion": f"policy.linkerd.io/{version}", "kind": kind, "metadata": meta(name), "spec": spec}


items = []
servers = [(f"srv-{s:02}", 8001 + s) for s in range(49)] + [("web", 8080)]
for i, (server, port) in enumerate(servers):
    sid = f"{server}-clients"
    items.append(obj("v1beta3", "Server", server,
                     {"podSelector": {"matchLabels": {"app": "backend"}}, "port": port, "proxyProtocol": "HTTP/1"}))
    for k in range(3):
        items.append(obj("v1beta1", "ServerAuthorization", f"{server}-saz-{k}",
                         {"server": {"name": server},
                          "client": {"meshTLS": {"serviceAccounts": [{"name": f"caller-{k}", "namespace": sid}]}}}))
    for k in range(4):
        name = f"{server}-mtls-{k}"
        items.append(obj("v1alpha1", "MeshTLSAuthentication", name,
                         {"identities": [f"caller-{k}.{sid}.{ID}", f"*.{server}-team-{k}.{ID}"]}))
        items.append(obj("v1alpha1", "AuthorizationPolicy", name,
                         {"targetRef": server_ref(server),
                          "requiredAuthenticationRefs": [authn_ref("MeshTLSAuthentication", name)]}))
    for k in range(2):
        name = f"{server}-net-{k}"
        items.append(obj("v1alpha1", "NetworkAuthentication", name,
                         {"networks": [{"cidr": f"10.{i}.{k}.0/24"},
                                       {"cidr": f"10.{i}.{k + 100}.0/24", "except": [f"10.{i}.{k + 100}.7/32"]}]}))
        items.append(obj("v1alpha1", "AuthorizationPolicy", name,
                         {"targetRef": server_ref(server),
                          "requiredAuthenticationRefs": [authn_ref("NetworkAuthentication", name)]}))
    last = f"{server}-zz"
    identities = [CLIENT] if server == "web" else [f"*.{sid}.{ID}"]
    items.append(obj("v1alpha1", "MeshTLSAuthentication", last, {"identities": identities}))
    refs = [authn_ref("MeshTLSAuthentication", last)]
    if server != "web":
        items.append(obj("v1alpha1", "NetworkAuthentication", last, {"networks": [{"cidr": f"10.{i}.200.0/24"}]}))
        refs.append(authn_ref("NetworkAuthentication", last))
    items.append(obj("v1alpha1", "AuthorizationPolicy", last,
                     {"targetRef": server_ref(server), "requiredAuthenticationRefs": refs}))
for server, _ in servers[:5]:
    items.append(obj("v1beta3", "HTTPRoute", f"{server}-route", {
        "parentRefs": [{"group": "policy.linkerd.io", "kind": "Server", "name": server}],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}]},
                  {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"},
                                "headers": [{"name": "x-team", "value": "a"}]}]}]}))

assert sum(1 for o in items if o["kind"] == "Server") == 50
assert sum(1 for o in items if o["kind"] in ("AuthorizationPolicy", "ServerAuthorization")) == 500
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout)
