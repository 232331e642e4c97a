//! `tessera policy explain` and `tessera policy who-can-reach`: ask the
//! server (`/tessera/v1/policy/explain`, `/tessera/v1/policy/who-can-reach`,
//! with the user's kubeconfig: RBAC `list servers.policy.linkerd.io` in the
//! namespace), which evaluates the pod's compiled inbound policy with the
//! proxy's own code, and print the verdict, the Server, the authorization or
//! route that decided and every rule looked at; or who is allowed in.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;
use tessera_policy::reach::{Allowed, Reach};
use tessera_policy::{Decision, Verdict};

/// `tessera policy` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Kubeconfig of the tessera server (default: KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<PathBuf>,
    /// Print the answer as JSON (the server's answer).
    #[arg(short = 'o', long, global = true, default_value = "text", value_parser = ["text", "json"])]
    output: String,
    #[command(subcommand)]
    action: PolicyAction,
}

// Parsed once per run: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
enum PolicyAction {
    /// Would a client be let in to a pod's port (or HTTP request), and which rule decides?
    Explain(ExplainArgs),
    /// Who may reach a pod's port: every authorization, its traffic, identities and networks.
    WhoCanReach(ReachArgs),
}

/// The pod's port: `--to NS/POD:PORT`, or `-n NS --pod POD --port PORT`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("client").required(true).args(["from", "from_identity", "from_serviceaccount", "unauthenticated"])))]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "pod"])))]
struct ExplainArgs {
    /// The client: a mesh identity or `unauthenticated`, optionally `@ADDRESS`
    /// (`api.shop.serviceaccount.identity.linkerd.cluster.local@10.1.2.3`).
    #[arg(long, value_name = "IDENTITY|unauthenticated[@ADDR]", conflicts_with = "from_ip")]
    from: Option<String>,
    /// The pod's port, `NAMESPACE/POD:PORT`.
    #[arg(long, value_name = "NS/POD:PORT", conflicts_with_all = ["namespace", "pod", "port"])]
    to: Option<String>,
    /// The pod's namespace (with --pod and --port).
    #[arg(short = 'n', long, requires = "pod")]
    namespace: Option<String>,
    /// The pod (with -n and --port).
    #[arg(long, requires_all = ["namespace", "port"])]
    pod: Option<String>,
    /// The pod's port (with -n and --pod).
    #[arg(long, requires = "pod")]
    port: Option<u16>,
    /// The client's mesh identity (`SA.NS.serviceaccount.identity.linkerd.cluster.local`).
    #[arg(long)]
    from_identity: Option<String>,
    /// The client's ServiceAccount, `NS/NAME` (its mesh identity).
    #[arg(long)]
    from_serviceaccount: Option<String>,
    /// A client without a mesh identity.
    #[arg(long)]
    unauthenticated: bool,
    /// The client's address (default: the first address of the cluster networks).
    #[arg(long)]
    from_ip: Option<IpAddr>,
    /// HTTP method (an HTTP request instead of a connection).
    #[arg(long)]
    method: Option<String>,
    /// HTTP path, with an optional `?query` (an HTTP request instead of a connection).
    #[arg(long)]
    path: Option<String>,
    /// HTTP header `NAME=VALUE` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Trust domain of mesh identities (for --from-serviceaccount; as `tessera server`).
    #[arg(long, default_value = "cluster.local")]
    identity_trust_domain: String,
    /// Control-plane namespace in mesh identities (for --from-serviceaccount).
    #[arg(long, default_value = "linkerd")]
    identity_control_namespace: String,
}

#[derive(Debug, clap::Args)]
struct ReachArgs {
    /// The pod's port, `NAMESPACE/POD:PORT`.
    #[arg(value_name = "NS/POD:PORT")]
    target: String,
}

/// A pod's port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    namespace: String,
    pod: String,
    port: u16,
}

/// Parses `NS/POD:PORT`.
fn parse_target(flag: &str, raw: &str) -> anyhow::Result<Target> {
    let shape = || anyhow::anyhow!("{flag} {raw:?}: expected NAMESPACE/POD:PORT");
    let (namespace, rest) = raw.split_once('/').ok_or_else(shape)?;
    let (pod, port) = rest.rsplit_once(':').ok_or_else(shape)?;
    if namespace.is_empty() || pod.is_empty() || pod.contains('/') {
        return Err(shape());
    }
    let port = port.parse::<u16>().ok().filter(|&p| p != 0).with_context(|| format!("{flag} {raw:?}: invalid port {port:?}: must be a number from 1 to 65535"))?;
    Ok(Target { namespace: namespace.to_owned(), pod: pod.to_owned(), port })
}

/// Who is asking: a mesh identity (`None`: unauthenticated) and maybe an address.
type From = (Option<String>, Option<IpAddr>);

/// Parses `--from IDENTITY|unauthenticated[@ADDR]`.
fn parse_from(raw: &str) -> anyhow::Result<From> {
    let (who, addr) = match raw.rsplit_once('@') {
        Some((who, addr)) => {
            let addr = addr.parse::<IpAddr>().ok().with_context(|| format!("--from {raw:?}: invalid address {addr:?} after @: must be an IPv4 or IPv6 address"))?;
            (who, Some(addr))
        }
        None => (raw, None),
    };
    match who {
        "" => anyhow::bail!("--from {raw:?}: expected a mesh identity or unauthenticated, optionally @ADDRESS"),
        "unauthenticated" => Ok((None, addr)),
        identity => Ok((Some(identity.to_owned()), addr)),
    }
}

impl ExplainArgs {
    fn target(&self) -> anyhow::Result<Target> {
        match (&self.to, &self.namespace, &self.pod, self.port) {
            (Some(to), ..) => parse_target("--to", to),
            (None, Some(namespace), Some(pod), Some(port)) => Ok(Target { namespace: namespace.clone(), pod: pod.clone(), port }),
            _ => anyhow::bail!("give the pod's port as --to NAMESPACE/POD:PORT or as -n NAMESPACE --pod POD --port PORT"),
        }
    }

    fn client(&self) -> anyhow::Result<From> {
        if let Some(from) = &self.from {
            return parse_from(from);
        }
        let identity = match (&self.from_identity, &self.from_serviceaccount) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(sa)) => {
                let (ns, name) = sa.split_once('/').filter(|(ns, name)| !ns.is_empty() && !name.is_empty()).context("--from-serviceaccount must be NAMESPACE/NAME")?;
                Some(format!("{name}.{ns}.serviceaccount.identity.{}.{}", self.identity_control_namespace, self.identity_trust_domain))
            }
            (None, None) => None,
        };
        Ok((identity, self.from_ip))
    }

    /// The explain API's query (`namespace`, `pod`, `port`, `from`, `ip`, `method`, `path`, `header`…).
    fn query(&self) -> anyhow::Result<String> {
        let target = self.target()?;
        let (identity, addr) = self.client()?;
        for h in &self.headers {
            let (name, _) = h.split_once('=').with_context(|| format!("--header {h:?}: expected NAME=VALUE"))?;
            http::HeaderName::from_bytes(name.trim().as_bytes()).with_context(|| format!("--header {h:?}: invalid header name"))?;
        }
        let mut pairs = vec![
            ("namespace", target.namespace),
            ("pod", target.pod),
            ("port", target.port.to_string()),
            ("from", identity.unwrap_or_else(|| "unauthenticated".to_owned())),
        ];
        pairs.extend(addr.map(|a| ("ip", a.to_string())));
        pairs.extend(self.method.clone().map(|m| ("method", m)));
        pairs.extend(self.path.clone().map(|p| ("path", p)));
        pairs.extend(self.headers.iter().map(|h| ("header", h.clone())));
        Ok(query_string(&pairs))
    }
}

fn query_string(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&")
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` on the server with the user's kubeconfig; the server's refusal
/// (400, 403, 404) is the message shown.
async fn get(args: &PolicyArgs, path: &str) -> anyhow::Result<Value> {
    let config = match &args.kubeconfig {
        Some(file) => {
            let file = kube::config::Kubeconfig::read_from(file).with_context(|| format!("reading {}", file.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    let request = http::Request::get(path).body(Vec::new())?;
    let text = client.request_text(request).await.map_err(|err| match err {
        kube::Error::Api(status) => anyhow::anyhow!("{}", status.message),
        other => anyhow::Error::new(other).context(format!("GET {path}")),
    })?;
    serde_json::from_str(&text).with_context(|| format!("decoding the answer to GET {path}"))
}

pub(crate) async fn run(args: PolicyArgs) -> anyhow::Result<i32> {
    match &args.action {
        PolicyAction::Explain(e) => {
            let answer = get(&args, &format!("/tessera/v1/policy/explain?{}", e.query()?)).await?;
            let decision: Decision = serde_json::from_value(answer["decision"].clone()).context("decoding the decision")?;
            if args.output == "json" {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", render(&answer, &decision));
            }
            Ok(if decision.verdict == Verdict::Deny { 1 } else { 0 })
        }
        PolicyAction::WhoCanReach(r) => {
            let t = parse_target("who-can-reach", &r.target)?;
            let query = query_string(&[("namespace", t.namespace), ("pod", t.pod), ("port", t.port.to_string())]);
            let answer = get(&args, &format!("/tessera/v1/policy/who-can-reach?{query}")).await?;
            if args.output == "json" {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                let reach: Reach = serde_json::from_value(answer).context("decoding who-can-reach")?;
                print!("{}", render_reach(&reach));
            }
            Ok(0)
        }
    }
}

/// The default policy the trace names (`port N: no Server selects it; the
/// pod's default inbound policy P applies`).
fn default_policy_of(d: &Decision) -> String {
    d.trace
        .iter()
        .find_map(|l| l.split_once("default inbound policy ").and_then(|(_, rest)| rest.split_whitespace().next()))
        .unwrap_or("unknown")
        .to_owned()
}

/// The shape of `tessera rbac explain`: verdict and reason, what decided, then why.
fn render(answer: &Value, d: &Decision) -> String {
    let verdict = match d.verdict {
        Verdict::Allow => "ALLOWED",
        Verdict::Deny => "DENIED",
        Verdict::AuditDeny => "AUDIT (allowed; would be denied)",
    };
    let mut out = format!("{verdict}  {}\n\n", d.reason);
    let server = match &d.server {
        Some(s) => format!("Server {s}"),
        None => format!("none (default policy {})", default_policy_of(d)),
    };
    let pod = &answer["pod"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    out.push_str(&format!("pod:           {}/{} port {}\n", text(&pod["namespace"]), text(&pod["name"]), pod["port"]));
    out.push_str(&format!("server:        {server}\n"));
    if let Some(route) = &d.route {
        out.push_str(&format!("route:         HTTPRoute {route}\n"));
    }
    match &d.authorization {
        Some((kind, name)) => out.push_str(&format!("authorization: {kind}/{name}\n")),
        None => out.push_str("authorization: none matched\n"),
    }
    if let Some(status) = d.http_status {
        out.push_str(&format!("http status:   {status}\n"));
    }
    out.push_str("\nrules looked at:\n");
    for line in &d.trace {
        let mark = if line.contains(": matched") || line.starts_with("verdict: authorized") {
            '✔'
        } else if line.contains("not matched") || line.starts_with("verdict: denied") {
            '×'
        } else {
            '·'
        };
        out.push_str(&format!("  {mark} {line}\n"));
    }
    out
}

fn clients_text(a: &Allowed) -> String {
    if a.unauthenticated {
        return "any client (unauthenticated)".to_owned();
    }
    a.identities.iter().map(|id| if id == "*" { "any mesh identity (*)".to_owned() } else { id.clone() }).collect::<Vec<_>>().join(", ")
}

fn row(a: &Allowed) -> Vec<String> {
    let name = if a.audit { format!("{}/{} (audit: logged as would-be denial)", a.kind, a.name) } else { format!("{}/{}", a.kind, a.name) };
    let traffic = match &a.route {
        Some(route) => format!("HTTPRoute {route}"),
        None => a.scope.as_str().to_owned(),
    };
    vec![name, traffic, clients_text(a), tessera_policy::evaluate::networks_text(&a.networks)]
}

/// `pod …: Server …`, the routes, then one row per authorization.
fn render_reach(r: &Reach) -> String {
    let mut out = format!("pod:     {}/{} port {}\n", r.namespace, r.pod, r.port);
    match &r.server {
        None => out.push_str(&format!("server:  none (default policy {})\n", r.default_policy)),
        Some(s) => {
            let access = s.access_policy.map(|p| format!(", accessPolicy {p}")).unwrap_or_default();
            out.push_str(&format!("server:  Server {} (proxyProtocol {}{access})\n", s.name, s.proxy_protocol));
        }
    }
    for route in &r.routes {
        out.push_str(&format!("route:   HTTPRoute {} ({})\n", route.name, route.matches.join(" | ")));
    }
    if !r.routes.is_empty() {
        out.push_str("         HTTP requests are authorized by their HTTPRoute's policies; a request matching no route is refused (404)\n");
    }
    out.push('\n');
    if r.allowed.is_empty() {
        out.push_str("nobody may reach this port\n");
        return out;
    }
    let mut rows = vec![["AUTHORIZATION", "TRAFFIC", "CLIENTS", "NETWORKS"].map(str::to_owned).to_vec()];
    rows.extend(r.allowed.iter().map(row));
    out.push_str(&crate::columns::render(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use serde_json::json;
    use tessera_policy::{Client, PodInboundPolicy};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PolicyArgs,
    }

    fn parse(argv: &[&str]) -> Result<PolicyArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("policy").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn explain_args(argv: &[&str]) -> ExplainArgs {
        match parse(argv).unwrap().action {
            PolicyAction::Explain(e) => e,
            PolicyAction::WhoCanReach(_) => unreachable!(),
        }
    }

    fn policy() -> PodInboundPolicy {
        serde_json::from_value(json!({"namespace": "shop", "pod": "db-0", "defaultPolicy": "deny", "clusterNetworks": ["10.0.0.0/8"],
            "ports": [{"port": 8080, "server": "db-http", "proxyProtocol": "HTTP/1", "accessPolicy": null, "routes": [],
                "authorizations": [{"kind": "AuthorizationPolicy", "name": "api", "networks": [{"net": "0.0.0.0/0"}],
                    "authentication": {"identities": [{"exact": "api.shop.serviceaccount.identity.linkerd.cluster.local"}]}}]}]}))
        .unwrap()
    }

    /// What the server answers (see the apiserver's `policy::explain`).
    fn answer(p: &PodInboundPolicy, port: u16, identity: Option<&str>, addr: &str) -> (Value, Decision) {
        let d = p.evaluate(port, &Client { identity: identity.map(str::to_owned), addr: addr.parse().unwrap() }, None);
        (json!({"pod": {"namespace": p.namespace, "name": p.pod, "port": port}, "decision": d}), d)
    }

    #[test]
    fn one_client_kind_and_one_target_are_required() {
        assert!(parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080"]).is_err());
        assert!(parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--unauthenticated", "--from-identity", "x"]).is_err());
        assert!(parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--unauthenticated"]).is_ok());
        assert!(parse(&["explain", "--to", "shop/db-0:8080", "--from", "unauthenticated"]).is_ok());
        assert!(parse(&["explain", "--from", "unauthenticated"]).is_err(), "no target");
        assert!(parse(&["explain", "--to", "shop/db-0:8080", "-n", "shop", "--from", "x"]).is_err(), "two targets");
        assert!(parse(&["explain", "--to", "shop/db-0:8080", "--from", "x", "--unauthenticated"]).is_err(), "two clients");
        assert!(parse(&["explain", "--to", "shop/db-0:8080", "--from", "x@10.0.0.1", "--from-ip", "10.0.0.2"]).is_err(), "two addresses");
        assert!(parse(&["explain", "-n", "shop", "--pod", "db-0", "--unauthenticated"]).is_err(), "--pod needs --port");
        assert!(parse(&["who-can-reach", "shop/db-0:8080", "-o", "json"]).is_ok());
        assert!(parse(&["who-can-reach"]).is_err());
    }

    #[test]
    fn both_spellings_ask_the_same_question() {
        let id = "api.shop.serviceaccount.identity.linkerd.cluster.local";
        let old = explain_args(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--from-serviceaccount", "shop/api", "--from-ip", "10.1.2.3", "--method", "GET", "--path", "/x?a=b"]);
        let new = explain_args(&["explain", "--from", &format!("{id}@10.1.2.3"), "--to", "shop/db-0:8080", "--method", "GET", "--path", "/x?a=b"]);
        let expected = format!("namespace=shop&pod=db-0&port=8080&from={id}&ip=10.1.2.3&method=GET&path=%2Fx%3Fa%3Db");
        assert_eq!(old.query().unwrap(), expected);
        assert_eq!(new.query().unwrap(), expected);
        let plain = explain_args(&["explain", "--from", "unauthenticated@::1", "--to", "shop/db-0:1", "--header", "x-a=1"]);
        assert_eq!(plain.query().unwrap(), "namespace=shop&pod=db-0&port=1&from=unauthenticated&ip=%3A%3A1&header=x-a%3D1");
        let plain = explain_args(&["explain", "-n", "shop", "--pod", "db-0", "--port", "1", "--unauthenticated"]);
        assert_eq!(plain.query().unwrap(), "namespace=shop&pod=db-0&port=1&from=unauthenticated");
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (argv, message) in [
            (vec!["--from-serviceaccount", "api", "-n", "shop", "--pod", "db-0", "--port", "8080"], "--from-serviceaccount must be NAMESPACE/NAME"),
            (vec!["--unauthenticated", "--header", "x", "-n", "shop", "--pod", "db-0", "--port", "8080"], "--header \"x\": expected NAME=VALUE"),
            (vec!["--unauthenticated", "--header", "a b=1", "-n", "shop", "--pod", "db-0", "--port", "8080"], "--header \"a b=1\": invalid header name"),
            (vec!["--from", "unauthenticated", "--to", "shop"], "--to \"shop\": expected NAMESPACE/POD:PORT"),
            (vec!["--from", "unauthenticated", "--to", "shop/db-0"], "--to \"shop/db-0\": expected NAMESPACE/POD:PORT"),
            (vec!["--from", "unauthenticated", "--to", "/db-0:1"], "--to \"/db-0:1\": expected NAMESPACE/POD:PORT"),
            (vec!["--from", "unauthenticated", "--to", "shop/:1"], "--to \"shop/:1\": expected NAMESPACE/POD:PORT"),
            (vec!["--from", "unauthenticated", "--to", "a/b/c:1"], "--to \"a/b/c:1\": expected NAMESPACE/POD:PORT"),
            (vec!["--from", "unauthenticated", "--to", "shop/db-0:99999"], "--to \"shop/db-0:99999\": invalid port \"99999\": must be a number from 1 to 65535"),
            (vec!["--from", "unauthenticated", "--to", "shop/db-0:0"], "--to \"shop/db-0:0\": invalid port \"0\": must be a number from 1 to 65535"),
            (vec!["--from", "unauthenticated@nowhere", "--to", "shop/db-0:1"], "--from \"unauthenticated@nowhere\": invalid address \"nowhere\" after @: must be an IPv4 or IPv6 address"),
            (vec!["--from", "@10.0.0.1", "--to", "shop/db-0:1"], "--from \"@10.0.0.1\": expected a mesh identity or unauthenticated, optionally @ADDRESS"),
        ] {
            let argv: Vec<&str> = std::iter::once("explain").chain(argv).collect();
            assert_eq!(explain_args(&argv).query().unwrap_err().to_string(), message, "{argv:?}");
        }
        assert_eq!(parse_target("who-can-reach", "shop").unwrap_err().to_string(), "who-can-reach \"shop\": expected NAMESPACE/POD:PORT");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn renders_allow_and_deny() {
        let p = policy();
        let (a, d) = answer(&p, 8080, Some("api.shop.serviceaccount.identity.linkerd.cluster.local"), "10.0.0.1");
        let text = render(&a, &d);
        assert!(text.starts_with("ALLOWED  authorized by AuthorizationPolicy/api\n\npod:           shop/db-0 port 8080\n"), "{text}");
        assert!(text.contains("server:        Server db-http\n") && text.contains("authorization: AuthorizationPolicy/api\n"), "{text}");

        let (a, d) = answer(&p, 8080, Some("web.shop.serviceaccount.identity.linkerd.cluster.local"), "10.0.0.1");
        let text = render(&a, &d);
        assert!(text.starts_with("DENIED  unauthorized connection on server/db-http\n"), "{text}");
        assert!(text.contains("  × AuthorizationPolicy/api: identity not matched: web.shop.serviceaccount.identity.linkerd.cluster.local is not in [api.shop.serviceaccount.identity.linkerd.cluster.local]\n"), "{text}");

        let (a, d) = answer(&p, 9, None, "192.0.2.1");
        assert!(render(&a, &d).contains("server:        none (default policy deny)\n"));
    }

    #[test]
    fn who_can_reach_is_a_table() {
        let mut p = policy();
        p.ports[0].access_policy = Some(tessera_policy::DefaultPolicy::Audit);
        let text = render_reach(&tessera_policy::reach::who_can_reach(&p, 8080));
        assert_eq!(
            text,
            "pod:     shop/db-0 port 8080\n\
             server:  Server db-http (proxyProtocol HTTP/1, accessPolicy audit)\n\
             \n\
             AUTHORIZATION                                      TRAFFIC       CLIENTS                                                  NETWORKS\n\
             AuthorizationPolicy/api                            all traffic   api.shop.serviceaccount.identity.linkerd.cluster.local   0.0.0.0/0\n\
             default/audit (audit: logged as would-be denial)   all traffic   any client (unauthenticated)                             0.0.0.0/0, ::/0\n"
        );
        let text = render_reach(&tessera_policy::reach::who_can_reach(&p, 9));
        assert_eq!(text, "pod:     shop/db-0 port 9\nserver:  none (default policy deny)\n\nnobody may reach this port\n");
    }
}
