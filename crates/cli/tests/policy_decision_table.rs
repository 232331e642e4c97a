//! Issue 16's decision table: every case states the Linkerd rule it follows,
//! the policy objects in force (its scenario), the client (mesh identity or
//! none, source address), the port and, for HTTP, the request; and the
//! verdict Linkerd's rule gives. Each case is checked twice, and both must
//! give that verdict:
//!
//! - the real proxy, observed from outside: a real `tessera proxy --policy on`
//!   for pod shop/db-0, its policy watched from a real `tessera server`, its
//!   certificate from a real `tessera identity`; a client connects from its
//!   own loopback address (127.0.0.0/16 is the cluster network here, 127.9/16
//!   is not), with mTLS when it has an identity (its leaf signed by the
//!   mesh's issuer, as Certify would), and sends an HTTP/1.1 request or
//!   opaque bytes. The verdict is what the client got (status, echo or a
//!   closed connection) together with which of Linkerd's authz counters
//!   moved on the proxy's `/metrics` (`inbound_*_authz_would_deny_total`
//!   tells `audit` from allow);
//! - `tessera policy explain … -o json`, the CLI against the same server;
//!   for a denied request, the proxy's `l5d-proxy-error` must also be
//!   explain's `reason` word for word.
//!
//! Scenarios are applied with kubectl one after another; the proxy is known
//! to enforce a scenario once a request to the sentinel port (7777) is
//! counted against that scenario's own sentinel Server (applied last).
//!
//! Rules are quoted or paraphrased from Linkerd's documentation:
//! REF = <https://linkerd.io/2/reference/authorization-policy/>,
//! FEAT = <https://linkerd.io/2/features/server-policy/>,
//! ROUTE = <https://linkerd.io/2/tasks/configuring-per-route-policy/>,
//! MESH = the README's inbound proxy row (client-sent `l5d-client-id` removed, as linkerd2-proxy),
//! or, where the docs are silent, from the README's "Policy semantics"
//! (tessera's reading of Linkerd's policy controller).

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::mesh::{Proc, identity};
use support::{Server, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpSocket;

const NS: &str = "shop";
const POD: &str = "db-0";
const SUFFIX: &str = "serviceaccount.identity.linkerd.cluster.local";

/// The cluster networks given to `tessera server`.
const CLUSTER_NETWORKS: &str = "127.0.0.0/16,10.0.0.0/8";
/// The server's `--default-inbound-policy` (not Linkerd's default, so that
/// cases show the flag at work).
const FLAG_DEFAULT: &str = "all-authenticated";

/// Client addresses: two inside the cluster networks, two outside.
const IN: &str = "127.0.3.1";
const IN_EXCEPT: &str = "127.0.3.66";
const OUT: &str = "127.9.0.7";
const OUT_EXCEPT: &str = "127.9.0.200";

/// Pod ports: `http` 8080, `admin` 9990, unnamed 7000 (all in the pod's
/// containerPorts), 9999 (not declared), 7777 (sentinel), and 9000, which
/// the proxy serves on a dual-stack socket so that IPv4 clients arrive as
/// IPv4-mapped IPv6 addresses.
const HTTP: u16 = 8080;
const ADMIN: u16 = 9990;
const PLAIN: u16 = 7000;
const UNDECLARED: u16 = 9999;
const MAPPED: u16 = 9000;
const SENTINEL: u16 = 7777;

fn id(sa: &str, ns: &str) -> String {
    format!("{sa}.{ns}.{SUFFIX}")
}

/// A client: its mesh identity (None: plain text) and source address.
#[derive(Clone, Debug)]
struct Who {
    identity: Option<String>,
    addr: &'static str,
}

fn meshed(sa: &str, ns: &str, addr: &'static str) -> Who {
    Who { identity: Some(id(sa, ns)), addr }
}

fn raw_identity(identity: &str, addr: &'static str) -> Who {
    Who { identity: Some(identity.to_owned()), addr }
}

fn plain(addr: &'static str) -> Who {
    Who { identity: None, addr }
}

/// An HTTP request (None in a case: an opaque TCP connection).
#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

fn get(path: &'static str) -> Option<Req> {
    Some(Req { method: "GET", path, headers: Vec::new() })
}

fn req(method: &'static str, path: &'static str, headers: &[(&'static str, &'static str)]) -> Option<Req> {
    Some(Req { method, path, headers: headers.to_vec() })
}

/// The verdict: `explain`'s `decision.verdict` and `decision.httpStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Allow,
    /// Allowed by an `audit` policy, counted as a would-be denial.
    Audit,
    /// HTTP 403 / connection closed.
    Deny,
    /// HTTP 404: no HTTPRoute matched.
    NoRoute,
}

#[derive(Debug)]
struct Case {
    /// The Linkerd rule this case follows, and where it is written.
    rule: &'static str,
    from: Who,
    port: u16,
    http: Option<Req>,
    expect: Expect,
}

fn case(rule: &'static str, from: Who, port: u16, http: Option<Req>, expect: Expect) -> Case {
    Case { rule, from, port, http, expect }
}

/// Policy objects in force, the default-policy annotations, and the cases.
struct Scenario {
    name: &'static str,
    namespace_default: Option<&'static str>,
    pod_default: Option<&'static str>,
    yaml: String,
    cases: Vec<Case>,
}

/// A v1beta3 Server on `port` of the db pod.
fn server(name: &str, port: &str, extra: &str) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{name: {name}, namespace: {NS}, labels: {{tier: data}}}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  port: {port}\n{extra}---\n"
    )
}

fn mtls(name: &str, ns: &str, spec: &str) -> String {
    format!("apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n")
}

fn netauthn(name: &str, networks: &str) -> String {
    format!("apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  networks: {networks}\n---\n")
}

/// An AuthorizationPolicy targeting `target` (`Kind/name`) with these refs.
fn authz(name: &str, target: &str, refs: &str) -> String {
    let (kind, target_name) = target.split_once('/').unwrap();
    let group = match kind {
        "Namespace" => "",
        _ => "policy.linkerd.io",
    };
    format!(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  targetRef: {{group: \"{group}\", kind: {kind}, name: {target_name}}}\n  requiredAuthenticationRefs: {refs}\n---\n"
    )
}

fn saz(name: &str, spec: &str) -> String {
    format!("apiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n{spec}---\n")
}

fn route(name: &str, parent: &str, rules: &str) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: policy.linkerd.io, kind: Server, name: {parent}}}]\n  rules: {rules}\n---\n"
    )
}

const MTLS_REF: &str = "group: policy.linkerd.io, kind: MeshTLSAuthentication";
const NET_REF: &str = "group: policy.linkerd.io, kind: NetworkAuthentication";

// One push per scenario keeps each group's comment beside it.
#[allow(clippy::vec_init_then_push)]
fn scenarios() -> Vec<Scenario> {
    use Expect::*;
    let api = || meshed("api", NS, IN);
    let web = || meshed("web", NS, IN);
    let backup = || meshed("backup", "ops", IN);
    let mut all = Vec::new();

    // --- default policies (no Server selects the port) ---
    all.push(Scenario {
        name: "server flag default",
        namespace_default: None,
        pod_default: None,
        yaml: String::new(),
        cases: vec![
            case("REF Default policies: proxy.defaultInboundPolicy (here --default-inbound-policy all-authenticated) applies when no annotation overrides it; all-authenticated allows meshed clients from anywhere", meshed("api", NS, OUT), PLAIN, None, Allow),
            case("REF Default policies: all-authenticated allows only meshed clients: a plain-text request is refused with 403", plain(IN), HTTP, get("/"), Deny),
            case("REF Default policies: all-authenticated refuses a plain-text connection", plain(IN), PLAIN, None, Deny),
            case("README Policy semantics / controller: a port the pod does not declare is still governed by the default policy", api(), UNDECLARED, get("/"), Allow),
        ],
    });
    all.push(Scenario {
        name: "namespace cluster-authenticated",
        namespace_default: Some("cluster-authenticated"),
        pod_default: None,
        yaml: String::new(),
        cases: vec![
            case("REF Default policies: the namespace annotation overrides the cluster default; cluster-authenticated allows meshed clients in the cluster networks", api(), PLAIN, None, Allow),
            case("REF Default policies: cluster-authenticated refuses a meshed client outside the cluster networks", meshed("api", NS, OUT), PLAIN, None, Deny),
            case("REF Default policies: cluster-authenticated refuses plain text even from the cluster", plain(IN), HTTP, get("/"), Deny),
        ],
    });
    all.push(Scenario {
        name: "namespace cluster-unauthenticated",
        namespace_default: Some("cluster-unauthenticated"),
        pod_default: None,
        yaml: String::new(),
        cases: vec![
            case("REF Default policies: cluster-unauthenticated allows non-meshed clients in the same cluster", plain(IN), HTTP, get("/"), Allow),
            case("REF Default policies: cluster-unauthenticated refuses clients outside the cluster networks", plain(OUT), HTTP, get("/"), Deny),
            case("REF Default policies: cluster-unauthenticated refuses meshed clients outside the cluster too", meshed("api", NS, OUT), PLAIN, None, Deny),
        ],
    });
    all.push(Scenario {
        name: "namespace all-unauthenticated",
        namespace_default: Some("all-unauthenticated"),
        pod_default: None,
        yaml: String::new(),
        cases: vec![
            case("REF Default policies: all-unauthenticated allows all traffic, plain text from outside the cluster included", plain(OUT), HTTP, get("/"), Allow),
            case("REF Default policies: all-unauthenticated allows meshed connections from anywhere", meshed("api", NS, OUT), PLAIN, None, Allow),
        ],
    });
    all.push(Scenario {
        name: "namespace deny",
        namespace_default: Some("deny"),
        pod_default: None,
        yaml: String::new(),
        cases: vec![
            case("REF Default policies: deny: all traffic is denied, meshed requests included (403)", api(), HTTP, get("/"), Deny),
            case("REF Default policies: deny closes plain connections", plain(IN), PLAIN, None, Deny),
        ],
    });
    all.push(Scenario {
        name: "namespace audit",
        namespace_default: Some("audit"),
        pod_default: None,
        yaml: String::new(),
        cases: vec![
            case("REF Default policies: audit is all-unauthenticated but requests are flagged in logs and metrics", plain(OUT), HTTP, get("/"), Audit),
            case("REF Default policies: audit lets a connection through, flagged", plain(OUT), PLAIN, None, Audit),
        ],
    });
    all.push(Scenario {
        name: "pod annotation over namespace",
        namespace_default: Some("deny"),
        pod_default: Some("all-unauthenticated"),
        yaml: String::new(),
        cases: vec![
            case("FEAT Default policies: the annotation is read at the namespace and pod levels; the pod's wins over its namespace's deny", plain(OUT), HTTP, get("/"), Allow),
        ],
    });
    all.push(Scenario {
        name: "misspelt pod annotation",
        namespace_default: Some("deny"),
        pod_default: Some("allow-all"),
        yaml: String::new(),
        cases: vec![
            case("README Policy semantics: an annotation that is not a policy name is ignored and the next level (the namespace's deny) applies", plain(IN), HTTP, get("/"), Deny),
        ],
    });

    // --- Servers and accessPolicy ---
    all.push(Scenario {
        name: "server without authorizations",
        namespace_default: None,
        pod_default: None,
        yaml: server("db-http", "http", ""),
        cases: vec![
            case("FEAT: when a Server is present, all traffic to the port is denied unless explicitly authorized (port selected by name)", api(), HTTP, get("/"), Deny),
            case("FEAT: a Server denies opaque connections on its port too", api(), HTTP, None, Deny),
            case("REF Server: a Server selects one port; the pod's other ports keep the default policy", api(), ADMIN, None, Allow),
        ],
    });
    all.push(Scenario {
        name: "server accessPolicy",
        namespace_default: None,
        pod_default: None,
        yaml: [
            server("db-http", "8080", "  accessPolicy: audit\n"),
            server("db-admin", "admin", "  accessPolicy: cluster-unauthenticated\n"),
            server("db-plain", "7000", "  accessPolicy: deny\n"),
        ]
        .concat(),
        cases: vec![
            case("REF Server v1beta3 accessPolicy: the policy applied to traffic not matching any authorization; audit allows and flags", plain(OUT), HTTP, get("/"), Audit),
            case("REF Server accessPolicy cluster-unauthenticated admits plain text from the cluster networks", plain(IN), ADMIN, None, Allow),
            case("REF Server accessPolicy cluster-unauthenticated refuses clients outside the cluster", plain(OUT), ADMIN, None, Deny),
            case("REF Server accessPolicy deny (the default) refuses everyone without an authorization", api(), PLAIN, get("/"), Deny),
        ],
    });

    all.push(Scenario {
        name: "server selection",
        namespace_default: None,
        pod_default: None,
        yaml: [
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: other-app, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  port: 7000\n---\n".to_owned(),
            server("misspelt", "htp", ""),
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: expr, namespace: shop}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: In, values: [db, cache]}]}\n  port: admin\n---\n".to_owned(),
            saz("expr-cluster", "  server: {name: expr}\n  client: {unauthenticated: true}\n"),
            server("undeclared", "9999", ""),
            authz("undeclared-api", "Server/undeclared", "[{kind: ServiceAccount, name: api}]"),
            server("routed", "9000", "  accessPolicy: all-unauthenticated\n"),
            route("everything", "routed", "[{}]"),
        ]
        .concat(),
        cases: vec![
            case("REF Server podSelector: a Server for other pods (app=web) leaves this pod's port to the default policy", api(), PLAIN, None, Allow),
            case("REF Server port: a name only selects a port the pod declares with that name; a misspelt name selects nothing (default policy)", api(), HTTP, get("/"), Allow),
            case("REF Server podSelector matchExpressions (In) select the pod: its port is denied unless authorized", plain(OUT), ADMIN, None, Deny),
            case("REF ServerAuthorization unauthenticated on the matchExpressions Server admits plain text from the cluster", plain(IN), ADMIN, None, Allow),
            case("README Policy semantics / controller: a port number selects the port even if no containerPort declares it", api(), UNDECLARED, get("/"), Allow),
            case("MESH: the proxy strips a client-sent l5d-client-id: a plain client forging api's identity stays unauthenticated (403)", plain(IN), UNDECLARED, req("GET", "/", &[("l5d-client-id", "api.shop.serviceaccount.identity.linkerd.cluster.local")]), Deny),
            case("README Policy semantics: a rule without matches matches every request; a route's requests need the route's own authorizations, not the Server's accessPolicy (403)", plain(OUT), MAPPED, req("PATCH", "/x/y", &[]), Deny),
            case("README Policy semantics: connections to a routed Server use its accessPolicy (all-unauthenticated)", plain(OUT), MAPPED, None, Allow),
        ],
    });

    // --- identities ---
    let suffix = format!("*.{NS}.{SUFFIX}");
    all.push(Scenario {
        name: "identities",
        namespace_default: None,
        pod_default: None,
        yaml: [
            server("db-http", "http", ""),
            server("db-admin", "admin", ""),
            server("db-plain", "7000", ""),
            mtls("api-only", NS, &format!("  identities: [\"{}\"]\n", id("api", NS))),
            mtls("shop-wide", NS, &format!("  identities: [\"{suffix}\"]\n")),
            mtls("anyone-meshed", NS, "  identities: [\"*\"]\n"),
            authz("http-api", "Server/db-http", &format!("[{{{MTLS_REF}, name: api-only}}]")),
            authz("admin-shop", "Server/db-admin", &format!("[{{{MTLS_REF}, name: shop-wide}}]")),
            authz("plain-meshed", "Server/db-plain", &format!("[{{{MTLS_REF}, name: anyone-meshed}}]")),
        ]
        .concat(),
        cases: vec![
            case("REF MeshTLSAuthentication identities: a client whose mTLS identity is listed is authenticated", api(), HTTP, get("/"), Allow),
            case("REF MeshTLSAuthentication: another identity of the same namespace is not the listed one (403)", web(), HTTP, get("/"), Deny),
            case("REF MeshTLSAuthentication: a plain-text client has no identity (403)", plain(IN), HTTP, get("/"), Deny),
            case("REF AuthorizationPolicy: without a NetworkAuthentication the listed identity is accepted from any network", meshed("api", NS, OUT), HTTP, None, Allow),
            case("REF MeshTLSAuthentication: a `*.` prefix matches all identities in a domain (every ServiceAccount of shop)", web(), ADMIN, get("/"), Allow),
            case("REF `*.shop…` matches on a label boundary: namespace evil-shop does not end in `.shop.serviceaccount…`", meshed("api", "evil-shop", IN), ADMIN, get("/"), Deny),
            case("REF `*.shop…` does not match namespace shop-evil", meshed("api", "shop-evil", IN), ADMIN, None, Deny),
            case("REF `*.shop…` needs a label before the suffix: the bare suffix is not an identity in the domain", raw_identity(&format!("{NS}.{SUFFIX}"), IN), ADMIN, None, Deny),
            case("REF identities are whole names: the same SA in another trust domain is another identity", raw_identity("api.shop.serviceaccount.identity.linkerd.evil.local", IN), ADMIN, None, Deny),
            case("REF MeshTLSAuthentication: an identity string of `*` authorizes all authenticated clients", backup(), PLAIN, None, Allow),
            case("REF `*` still requires mesh TLS: a plain connection is refused", plain(IN), PLAIN, None, Deny),
        ],
    });
    all.push(Scenario {
        name: "identity references",
        namespace_default: None,
        pod_default: None,
        yaml: [
            server("db-http", "http", ""),
            server("db-admin", "admin", ""),
            server("db-plain", "7000", ""),
            authz("http-web", "Server/db-http", "[{kind: ServiceAccount, name: web}]"),
            mtls("ops-backup", NS, "  identityRefs: [{kind: ServiceAccount, name: backup, namespace: ops}]\n"),
            authz("admin-backup", "Server/db-admin", &format!("[{{{MTLS_REF}, name: ops-backup}}]")),
            mtls("ops-namespace", "ops", "  identityRefs: [{kind: Namespace, name: ops}]\n"),
            authz("plain-ops", "Server/db-plain", &format!("[{{{MTLS_REF}, name: ops-namespace, namespace: ops}}]")),
        ]
        .concat(),
        cases: vec![
            case("REF AuthorizationPolicy requiredAuthenticationRefs may name a ServiceAccount (in the policy's namespace): its identity is authorized", web(), HTTP, get("/"), Allow),
            case("REF a ServiceAccount reference authorizes that ServiceAccount only", api(), HTTP, get("/"), Deny),
            case("REF MeshTLSAuthentication identityRefs: a ServiceAccount of another namespace", backup(), ADMIN, None, Allow),
            case("REF identityRefs ServiceAccount backup/ops does not admit api/shop", api(), ADMIN, None, Deny),
            case("REF identityRefs kind Namespace: every ServiceAccount of that namespace (MeshTLSAuthentication in another namespace, referenced with namespace)", backup(), PLAIN, get("/"), Allow),
            case("REF identityRefs Namespace ops does not admit shop's ServiceAccounts", api(), PLAIN, get("/"), Deny),
        ],
    });

    // --- networks ---
    all.push(Scenario {
        name: "networks",
        namespace_default: None,
        pod_default: None,
        yaml: [
            server("db-http", "http", ""),
            server("db-admin", "admin", ""),
            server("db-mapped", "9000", ""),
            server("db-plain", "7000", ""),
            netauthn("cluster-but-one", "[{cidr: 127.0.0.0/16, except: [127.0.3.64/26]}]"),
            authz("http-net", "Server/db-http", &format!("[{{{NET_REF}, name: cluster-but-one}}]")),
            saz("admin-plain", "  server: {name: db-admin}\n  client: {unauthenticated: true}\n"),
            saz("mapped-outside", "  server: {name: db-mapped}\n  client:\n    unauthenticated: true\n    networks: [{cidr: 127.9.0.0/16, except: [127.9.0.128/25]}]\n"),
            mtls("api-only", NS, &format!("  identities: [\"{}\"]\n", id("api", NS))),
            netauthn("cluster", "[{cidr: 127.0.0.0/16}]"),
            authz("plain-both", "Server/db-plain", &format!("[{{{MTLS_REF}, name: api-only}}, {{{NET_REF}, name: cluster}}]")),
        ]
        .concat(),
        cases: vec![
            case("REF NetworkAuthentication: clients from the listed networks are authenticated, without mesh TLS", plain(IN), HTTP, get("/"), Allow),
            case("REF NetworkAuthentication except: addresses in an except block are excluded from the network", plain(IN_EXCEPT), HTTP, get("/"), Deny),
            case("REF NetworkAuthentication: a meshed client outside the networks is refused all the same", meshed("api", NS, OUT), HTTP, get("/"), Deny),
            case("REF ServerAuthorization client.networks: when unset, the cluster networks; unauthenticated admits plain text from them", plain(IN), ADMIN, None, Allow),
            case("REF ServerAuthorization: unset networks exclude clients outside the cluster networks", plain(OUT), ADMIN, None, Deny),
            case("README Policy semantics: IPv4-mapped IPv6 client addresses match as IPv4 (dual-stack listener)", plain(OUT), MAPPED, get("/"), Allow),
            case("README Policy semantics: an IPv4-mapped address inside an except block is excluded", plain(OUT_EXCEPT), MAPPED, get("/"), Deny),
            case("REF AuthorizationPolicy: all required authentications must hold: identity and network", api(), PLAIN, None, Allow),
            case("REF AuthorizationPolicy: the right identity from outside the NetworkAuthentication is refused", meshed("api", NS, OUT), PLAIN, None, Deny),
            case("REF AuthorizationPolicy: the right network without mesh TLS is refused", plain(IN), PLAIN, None, Deny),
        ],
    });

    // --- several Servers, ServerAuthorization and AuthorizationPolicy together ---
    all.push(Scenario {
        name: "overlapping resources",
        namespace_default: None,
        pod_default: None,
        yaml: [
            server("a-http", "8080", ""),
            server("b-http", "http", ""),
            saz("open-b", "  server: {name: b-http}\n  client: {unauthenticated: true}\n"),
            saz("data-tier-api", "  server: {selector: {matchLabels: {tier: data}}}\n  client:\n    meshTLS:\n      serviceAccounts: [{name: api}]\n"),
            authz("ns-web", "Namespace/shop", "[{kind: ServiceAccount, name: web}]"),
            server("db-admin", "admin", ""),
            saz("admin-backup", &format!("  server: {{name: db-admin}}\n  client:\n    meshTLS:\n      identities: [\"{}\"]\n", id("backup", "ops"))),
            server("db-plain", "7000", ""),
            saz("plain-any-tls", "  server: {name: db-plain}\n  client:\n    meshTLS: {unauthenticatedTLS: true}\n"),
        ]
        .concat(),
        cases: vec![
            case("README Policy semantics: two Servers selecting one port: the first by name (a-http) keeps it, so b-http's ServerAuthorization does not apply", plain(IN), HTTP, get("/"), Deny),
            case("REF ServerAuthorization server.selector: authorizes every Server with matching labels (serviceAccounts = api of its namespace)", api(), HTTP, get("/"), Allow),
            case("REF AuthorizationPolicy targetRef Namespace: applies to all Servers of the namespace", web(), HTTP, get("/"), Allow),
            case("REF no authorization of a-http admits backup/ops", backup(), HTTP, None, Deny),
            case("REF a Server's authorizations add up: its own ServerAuthorization admits backup/ops", backup(), ADMIN, get("/"), Allow),
            case("REF …and the selector ServerAuthorization admits api", api(), ADMIN, get("/"), Allow),
            case("REF …and the Namespace AuthorizationPolicy admits web", web(), ADMIN, get("/"), Allow),
            case("README Policy semantics: meshTLS.unauthenticatedTLS admits any meshed client (even of another trust domain)", raw_identity("api.shop.serviceaccount.identity.linkerd.evil.local", IN), PLAIN, None, Allow),
            case("REF ServerAuthorization client.networks unset: the cluster networks, for meshTLS clients too", meshed("api", NS, OUT), PLAIN, None, Deny),
            case("REF ServerAuthorization meshTLS: a plain-text client is not a TLS client", plain(IN), PLAIN, None, Deny),
        ],
    });

    // --- HTTPRoutes ---
    all.push(Scenario {
        name: "http routes",
        namespace_default: None,
        pod_default: None,
        yaml: [
            server("db-http", "http", "  proxyProtocol: HTTP/1\n"),
            route("data-get", "db-http", "[{matches: [{path: {type: PathPrefix, value: /data}, method: GET}]}]"),
            route("admin", "db-http", "[{matches: [{path: {type: Exact, value: /data/admin}, headers: [{name: X-Admin, value: \"yes\"}]}]}]"),
            route("public", "db-http", "[{matches: [{path: {type: RegularExpression, value: \"/public/[0-9]+\"}}]}]"),
            mtls("api-only", NS, &format!("  identities: [\"{}\"]\n", id("api", NS))),
            authz("api-reads", "HTTPRoute/data-get", &format!("[{{{MTLS_REF}, name: api-only}}]")),
            authz("backup-admin", "HTTPRoute/admin", "[{kind: ServiceAccount, name: backup, namespace: ops}]"),
            netauthn("everywhere", "[{cidr: 0.0.0.0/0}, {cidr: \"::/0\"}]"),
            authz("public-all", "HTTPRoute/public", &format!("[{{{NET_REF}, name: everywhere}}]")),
            authz("server-web", "Server/db-http", "[{kind: ServiceAccount, name: web}]"),
            route("confirm", "db-http", "[{matches: [{path: {type: RegularExpression, value: \"/admin/[0-9]+\"}, queryParams: [{name: confirm, value: \"1\"}]}]}]"),
            authz("confirm-all", "HTTPRoute/confirm", &format!("[{{{NET_REF}, name: everywhere}}]")),
        ]
        .concat(),
        cases: vec![
            case("ROUTE: an AuthorizationPolicy targeting an HTTPRoute authorizes requests matching that route", api(), HTTP, get("/data/1"), Allow),
            case("Gateway API PathPrefix is element-wise: /data matches prefix /data", api(), HTTP, get("/data"), Allow),
            case("Gateway API PathPrefix is element-wise: /database does not match /data; no route: 404", api(), HTTP, get("/database"), NoRoute),
            case("HTTPRoute method match: POST /data matches no route (404)", api(), HTTP, req("POST", "/data/1", &[]), NoRoute),
            case("ROUTE / README: once routes exist, the Server's authorizations do not authorize requests (403 on the matched route)", web(), HTTP, get("/data/1"), Deny),
            case("README Policy semantics: connections (opaque traffic) still use the Server's authorizations", web(), HTTP, None, Allow),
            case("Gateway API precedence: an Exact path with a header match beats a PathPrefix; that route's policy admits backup/ops", backup(), HTTP, req("GET", "/data/admin", &[("x-admin", "yes")]), Allow),
            case("Gateway API precedence: the admin route is selected, and api is not authorized on it (403)", api(), HTTP, req("GET", "/data/admin", &[("x-admin", "yes")]), Deny),
            case("Gateway API header match is exact on the value: X-Admin: YES falls to the data-get route", api(), HTTP, req("GET", "/data/admin", &[("x-admin", "YES")]), Allow),
            case("Gateway API header names are case-insensitive: X-Admin matches the route's X-Admin as sent in any case", backup(), HTTP, req("GET", "/data/admin", &[("X-ADMIN", "yes")]), Allow),
            case("Gateway API queryParams match: DELETE /admin/42?confirm=1 selects the confirm route (the query is part of the request)", plain(OUT), HTTP, req("DELETE", "/admin/42?confirm=1", &[]), Allow),
            case("Gateway API queryParams exact value: confirm=10 is not confirm=1, no route (404)", plain(OUT), HTTP, req("DELETE", "/admin/42?confirm=10", &[]), NoRoute),
            case("Gateway API queryParams: without the parameter no route matches (404)", plain(OUT), HTTP, req("DELETE", "/admin/42", &[]), NoRoute),
            case("HTTPRoute RegularExpression path; NetworkAuthentication 0.0.0.0/0 admits plain text from anywhere", plain(OUT), HTTP, get("/public/42"), Allow),
            case("README Policy semantics: a regular expression matches the whole path; /public/42/x matches no route (404)", plain(OUT), HTTP, get("/public/42/x"), NoRoute),
        ],
    });

    // --- broken references ---
    all.push(Scenario {
        name: "broken references",
        namespace_default: None,
        pod_default: None,
        yaml: [
            server("db-http", "http", ""),
            authz("missing-authn", "Server/db-http", &format!("[{{{MTLS_REF}, name: no-such-authn}}]")),
            server("db-admin", "admin", ""),
            authz("missing-net", "Server/db-admin", &format!("[{{{NET_REF}, name: no-such-network}}]")),
            server("db-plain", "7000", ""),
            saz("other-server", "  server: {name: no-such-server}\n  client: {unauthenticated: true}\n"),
            server("db-mapped", "9000", "  proxyProtocol: HTTP/1\n"),
            route("bad-regex", "db-mapped", "[{matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]}]"),
            netauthn("everywhere", "[{cidr: 0.0.0.0/0}, {cidr: \"::/0\"}]"),
            authz("bad-regex-all", "HTTPRoute/bad-regex", &format!("[{{{NET_REF}, name: everywhere}}]")),
        ]
        .concat(),
        cases: vec![
            case("README Policy semantics: a missing MeshTLSAuthentication authorizes nobody", api(), HTTP, get("/"), Deny),
            case("README Policy semantics: a missing NetworkAuthentication authorizes nobody (not all networks)", plain(IN), ADMIN, None, Deny),
            case("README Policy semantics: …nor any meshed client", web(), ADMIN, None, Deny),
            case("REF ServerAuthorization server.name: one naming another Server does not apply here", plain(IN), PLAIN, get("/"), Deny),
            case("README Policy semantics: a regular expression that does not compile matches nothing: 404", plain(OUT), MAPPED, get("/(unclosed"), NoRoute),
        ],
    });
    all
}

// === the world: server, identity, the db pod's proxy and its app ===

const SETUP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: db, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  labels: {app: db}
  annotations: {linkerd.io/inject: enabled}
spec:
  serviceAccountName: db
  automountServiceAccountToken: false
  containers:
  - name: db
    image: db
    ports:
    - {name: http, containerPort: 8080}
    - {name: admin, containerPort: 9990}
    - {containerPort: 7000}
    - {containerPort: 9000}
    - {name: sentinel, containerPort: 7777}
";

/// The app behind every inbound port: HTTP requests get 200 `ok`; opaque
/// bytes are echoed after `echo:`. One exchange per connection.
async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                loop {
                    let Ok(n) = conn.read(&mut buf[got..]).await else { return };
                    if n == 0 {
                        return;
                    }
                    got += n;
                    let seen = &buf[..got];
                    let is_http = seen.first().is_some_and(u8::is_ascii_uppercase);
                    if !is_http {
                        let mut out = b"echo:".to_vec();
                        out.extend_from_slice(seen);
                        let _ = conn.write_all(&out).await;
                        return;
                    }
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                        return;
                    }
                    if got == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A leaf for `identity` signed by the mesh's issuer (the shape Certify issues).
fn leaf(pki: &Path, identity: &str) -> (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>) {
    let issuer_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("key.pem")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("crt.pem")).unwrap(), issuer_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![identity.to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let issuer_der = CertificateDer::from_pem_file(pki.join("crt.pem")).unwrap();
    (vec![cert.der().clone(), issuer_der], PrivatePkcs8KeyDer::from(key.serialize_der()))
}

fn client_config(pki: &Path, identity: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.join("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let (chain, key) = leaf(pki, identity);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(key))
        .unwrap();
    Arc::new(config)
}

/// What the client saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The HTTP status and the `l5d-proxy-error` header, if any.
    Status(u16, Option<String>),
    Echoed,
    Closed,
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, http: Option<&Req>) -> Seen {
    let sent = match http {
        Some(r) => {
            let mut text = format!("{} {} HTTP/1.1\r\nhost: db\r\n", r.method, r.path);
            for (k, v) in &r.headers {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            text.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
            text.into_bytes()
        }
        None => b"\x00\x01opaque-ping\n".to_vec(),
    };
    if stream.write_all(&sent).await.is_err() {
        return Seen::Closed;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        // An HTTP answer is complete with its headers (the body does not matter); an echo with the echo.
        if (http.is_some() && got.windows(4).any(|w| w == b"\r\n\r\n")) || (http.is_none() && got.len() >= 5 + sent.len()) {
            break;
        }
    }
    match http {
        Some(_) => {
            let text = String::from_utf8_lossy(&got);
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            let error = head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("l5d-proxy-error"))).map(|(_, v)| v.trim().to_owned());
            match text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()) {
                Some(status) => Seen::Status(status, error),
                None => Seen::Closed,
            }
        }
        None if got.starts_with(b"echo:") => Seen::Echoed,
        None => Seen::Closed,
    }
}

struct World {
    server: Server,
    pki: PathBuf,
    pod_ip: Ipv4Addr,
    admin: SocketAddr,
    rt: tokio::runtime::Runtime,
    _proxy: Proc,
    _identity: Proc,
    configs: std::collections::HashMap<String, Arc<rustls::ClientConfig>>,
    /// Whether the scenario in force put objects in namespace ops.
    ops_objects: bool,
}

/// Sums of Linkerd's authz counters on the proxy.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counters {
    http_allow: f64,
    http_deny: f64,
    http_would_deny: f64,
    http_no_route: f64,
    tcp_allow: f64,
    tcp_deny: f64,
    tcp_would_deny: f64,
}

impl World {
    async fn fetch(&self, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn metrics(&self) -> String {
        self.rt.block_on(self.fetch("/metrics"))
    }

    fn counters(&self) -> Counters {
        let text = self.metrics();
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum()
        };
        Counters {
            http_allow: sum("inbound_http_authz_allow_total"),
            http_deny: sum("inbound_http_authz_deny_total"),
            http_would_deny: sum("inbound_http_authz_would_deny_total"),
            http_no_route: sum("inbound_http_route_not_found_total"),
            tcp_allow: sum("inbound_tcp_authz_allow_total"),
            tcp_deny: sum("inbound_tcp_authz_deny_total"),
            tcp_would_deny: sum("inbound_tcp_authz_would_deny_total"),
        }
    }

    fn config(&mut self, identity: &str) -> Arc<rustls::ClientConfig> {
        let pki = self.pki.clone();
        self.configs.entry(identity.to_owned()).or_insert_with(|| client_config(&pki, identity)).clone()
    }

    /// One connection or request from `from` to `port`, as the client sees it.
    fn attempt(&mut self, from: &Who, port: u16, http: Option<&Req>) -> Seen {
        let tls = from.identity.as_deref().map(|i| self.config(i));
        let target = SocketAddr::new(IpAddr::V4(self.pod_ip), port);
        let source: IpAddr = from.addr.parse().unwrap();
        self.rt.block_on(async move {
            let attempt = async {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(source, 0)).unwrap();
                let stream = socket.connect(target).await.unwrap();
                match tls {
                    None => exchange(stream, http).await,
                    Some(config) => {
                        let name = ServerName::try_from(id("db", NS)).unwrap();
                        match tokio_rustls::TlsConnector::from(config).connect(name, stream).await {
                            Ok(stream) => exchange(stream, http).await,
                            Err(_) => Seen::Closed,
                        }
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(15), attempt).await.expect("the proxy answered within 15 s")
        })
    }

    /// Applies a scenario and waits until the proxy enforces it.
    fn apply(&mut self, index: usize, scenario: &Scenario, annotations: &mut (Option<&'static str>, Option<&'static str>)) {
        self.server.kubectl_ok(&[
            "delete",
            "servers.policy.linkerd.io,serverauthorizations.policy.linkerd.io,authorizationpolicies.policy.linkerd.io,meshtlsauthentications.policy.linkerd.io,networkauthentications.policy.linkerd.io,httproutes.policy.linkerd.io",
            "--all",
            "-n",
            NS,
        ]);
        // Only one scenario puts an object in ops (one kubectl call less per scenario).
        if index > 0 && self.ops_objects {
            self.server.kubectl_ok(&["delete", "meshtlsauthentications.policy.linkerd.io", "--all", "-n", "ops"]);
        }
        self.ops_objects = scenario.yaml.contains(", namespace: ops}\nspec:");
        let annotate = |kind: &str, name: &str, value: Option<&str>| {
            let arg = match value {
                Some(v) => format!("config.linkerd.io/default-inbound-policy={v}"),
                None => "config.linkerd.io/default-inbound-policy-".to_owned(),
            };
            let mut args = vec!["annotate", "--overwrite", kind, name, arg.as_str()];
            if kind == "pod" {
                args.extend(["-n", NS]);
            }
            self.server.kubectl_ok(&args);
        };
        if annotations.0 != scenario.namespace_default {
            annotate("namespace", NS, scenario.namespace_default);
            annotations.0 = scenario.namespace_default;
        }
        if annotations.1 != scenario.pod_default {
            annotate("pod", POD, scenario.pod_default);
            annotations.1 = scenario.pod_default;
        }
        if !scenario.yaml.is_empty() {
            let out = self.server.kubectl_stdin(&["apply", "-f", "-"], &scenario.yaml);
            assert!(out.status.success(), "scenario {}: kubectl apply: {}", scenario.name, String::from_utf8_lossy(&out.stderr));
        }
        // The sentinel Server, applied last: once the proxy counts a request
        // against it, the proxy holds a policy compiled after everything above.
        let sentinel = format!("sentinel-{index}");
        let out = self.server.kubectl_stdin(&["apply", "-f", "-"], &server(&sentinel, "sentinel", ""));
        assert!(out.status.success(), "sentinel: {}", String::from_utf8_lossy(&out.stderr));
        let label = format!("srv_name=\"{sentinel}\"");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.attempt(&plain(IN), SENTINEL, get("/").as_ref());
            if self.metrics().contains(&label) {
                return;
            }
            assert!(Instant::now() < deadline, "the proxy never enforced scenario {}", scenario.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns `tessera proxy` for shop/db-0 and waits for its inbound lines.
fn start_proxy(args: &[String], inbound: usize) -> (Proc, SocketAddr) {
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tessera proxy");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut admin, mut seen) = (None, 0);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("tessera proxy admin on http://") {
            admin = Some(a.parse().unwrap());
        }
        if line.starts_with("tessera proxy inbound on ") {
            seen += 1;
            if seen == inbound {
                break;
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), admin.expect("the proxy printed its admin address"))
}

fn world() -> World {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start_with(dir, &["--default-inbound-policy", FLAG_DEFAULT, "--cluster-networks", CLUSTER_NETWORKS]);
    let out = server.kubectl_stdin(&["apply", "-f", "-"], SETUP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pki = server.path("identity");
    let (identity_proc, identity_addr) = identity(&server, &pki);
    let certify_token = server.kubectl_ok(&["create", "token", "db", "-n", NS, "--audience", "identity.l5d.io"]);
    let api_token = server.kubectl_ok(&["create", "token", "db", "-n", NS, "--bound-object-kind", "Pod", "--bound-object-name", POD]);
    let (certify_file, api_file) = (server.path("db-identity-token"), server.path("db-api-token"));
    std::fs::write(&certify_file, certify_token.trim()).unwrap();
    std::fs::write(&api_file, api_token.trim()).unwrap();

    // A pod address of this run's own (other tests use 127.1–127.99).
    let pid = std::process::id();
    let pod_ip = Ipv4Addr::new(127, 200 + (pid % 50) as u8, (pid / 50 % 250) as u8, 1);
    let app = rt.block_on(app());
    let mut args: Vec<String> = [
        "proxy",
        "--identity-addr",
        &identity_addr,
        "--identity",
        &id("db", NS),
        "--admin-addr",
        "127.0.0.1:0",
        "--api-server",
        &server.url,
        "--namespace",
        NS,
        "--pod",
        POD,
        "--policy",
        "on",
    ]
    .map(String::from)
    .to_vec();
    for (flag, path) in
        [("--token-file", &certify_file), ("--trust-anchors", &pki.join("ca.crt")), ("--api-token-file", &api_file), ("--api-ca", &server.ca_file())]
    {
        args.extend([flag.to_owned(), path.display().to_string()]);
    }
    let ports = [HTTP, ADMIN, PLAIN, UNDECLARED, SENTINEL];
    for port in ports {
        args.extend(["--inbound".to_owned(), format!("{pod_ip}:{port}={app}")]);
    }
    args.extend(["--inbound".to_owned(), format!("[::ffff:{pod_ip}]:{MAPPED}={app}")]);
    let (proxy, admin) = start_proxy(&args, ports.len() + 1);
    let world = World { server, pki, pod_ip, admin, rt, _proxy: proxy, _identity: identity_proc, configs: Default::default(), ops_objects: false };
    // Ready: a certificate and the first policy.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !world.rt.block_on(world.fetch("/ready")).starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the proxy never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    world
}

/// `tessera policy explain … -o json` for a case (spawned; collected later).
fn explain(server: &Server, c: &Case) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.args(["policy", "explain", "--kubeconfig"]).arg(&server.kubeconfig);
    command.args(["-n", NS, "--pod", POD, "--port", &c.port.to_string(), "--from-ip"]);
    command.arg(if c.port == MAPPED { format!("::ffff:{}", c.from.addr) } else { c.from.addr.to_owned() });
    match &c.from.identity {
        Some(identity) => command.args(["--from-identity", identity]),
        None => command.arg("--unauthenticated"),
    };
    if let Some(r) = &c.http {
        command.args(["--method", r.method, "--path", r.path]);
        for (k, v) in &r.headers {
            command.args(["--header", &format!("{k}={v}")]);
        }
    }
    command.args(["-o", "json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("tessera policy explain")
}

/// `explain`'s answer as an [`Expect`] (an HTTP denial must carry its
/// status, a connection's none).
fn explained(child: Child, http: bool) -> Result<(Expect, String), String> {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Err(format!("explain failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let answer = json(&text);
    let decision = &answer["decision"];
    let reason = decision["reason"].as_str().unwrap_or_default().to_owned();
    match (decision["verdict"].as_str(), decision["httpStatus"].as_u64(), http) {
        (Some("allow"), None, _) => Ok((Expect::Allow, reason)),
        (Some("auditDeny"), None, _) => Ok((Expect::Audit, reason)),
        (Some("deny"), None, false) | (Some("deny"), Some(403), true) => Ok((Expect::Deny, reason)),
        (Some("deny"), Some(404), true) => Ok((Expect::NoRoute, reason)),
        _ => Err(format!("explain answered {decision}")),
    }
}

/// The proxy's decision from what the client saw and which counter moved.
fn observed(seen: &Seen, before: Counters, after: Counters, http: bool) -> Result<Expect, String> {
    let moved = |a: f64, b: f64| (b - a) >= 1.0;
    let (allow, deny, audit, no_route) = if http {
        (
            moved(before.http_allow, after.http_allow),
            moved(before.http_deny, after.http_deny),
            moved(before.http_would_deny, after.http_would_deny),
            moved(before.http_no_route, after.http_no_route),
        )
    } else {
        (moved(before.tcp_allow, after.tcp_allow), moved(before.tcp_deny, after.tcp_deny), moved(before.tcp_would_deny, after.tcp_would_deny), false)
    };
    let passed = if http { matches!(seen, Seen::Status(200, None)) } else { *seen == Seen::Echoed };
    let refused = if http { matches!(seen, Seen::Status(403, Some(_))) } else { *seen == Seen::Closed };
    match (allow, deny, audit, no_route) {
        (true, false, false, false) if passed => Ok(Expect::Allow),
        // As Linkerd, audit is an authorization (counted as allowed, authz
        // `default:audit`); tessera also counts it as a would-be denial.
        (true, false, true, false) if passed => Ok(Expect::Audit),
        (false, true, false, false) if refused => Ok(Expect::Deny),
        (false, false, false, true) if http && matches!(seen, Seen::Status(404, Some(_))) => Ok(Expect::NoRoute),
        _ => Err(format!("inconsistent: client saw {seen:?}; counters {before:?} -> {after:?}")),
    }
}

#[test]
fn decision_table_proxy_and_explain_agree_with_linkerd() {
    let started = Instant::now();
    let mut world = world();
    let scenarios = scenarios();
    let total: usize = scenarios.iter().map(|s| s.cases.len()).sum();
    assert!(total >= 60, "the table has {total} cases");
    let mut annotations = (None, None);
    let mut failures = Vec::new();
    for (index, scenario) in scenarios.iter().enumerate() {
        world.apply(index, scenario, &mut annotations);
        let mut proxy_answers = Vec::new();
        for c in &scenario.cases {
            let before = world.counters();
            let seen = world.attempt(&c.from, c.port, c.http.as_ref());
            let after = world.counters();
            let error = match &seen {
                Seen::Status(_, error) => error.clone(),
                _ => None,
            };
            proxy_answers.push((observed(&seen, before, after, c.http.is_some()), error));
        }
        // explain runs after the proxy saw the scenario: same server state.
        let children: Vec<Child> = scenario.cases.iter().map(|c| explain(&world.server, c)).collect();
        for ((c, (proxy, proxy_error)), child) in scenario.cases.iter().zip(proxy_answers).zip(children) {
            let explain = explained(child, c.http.is_some());
            let verdict = explain.as_ref().map(|(v, _)| *v);
            // A denied request's `l5d-proxy-error` is explain's reason, word for word.
            let reason_agrees = match (&explain, &proxy_error) {
                (Ok((Expect::Deny | Expect::NoRoute, reason)), Some(error)) => reason == error,
                (_, error) => error.is_none() || c.http.is_none(),
            };
            if proxy.as_ref() != Ok(&c.expect) || verdict.as_ref() != Ok(&c.expect) || !reason_agrees {
                failures.push(format!(
                    "[{}] {}\n    client {:?} from {} to port {} {:?}\n    expected {:?}; proxy {:?} (l5d-proxy-error {:?}); explain {:?}",
                    scenario.name, c.rule, c.from.identity, c.from.addr, c.port, c.http, c.expect, proxy, proxy_error, explain
                ));
            }
        }
    }
    eprintln!("{total} cases in {} scenarios: {:?}", scenarios.len(), started.elapsed());
    assert!(failures.is_empty(), "{} of {total} cases disagree:\n{}", failures.len(), failures.join("\n"));
}
