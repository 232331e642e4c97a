//! `tessera policy explain`: fetches a pod's compiled inbound policy from the
//! server (`/tessera/v1/policy/inbound`, with the user's kubeconfig: RBAC
//! `list servers.policy.linkerd.io` in the namespace) and evaluates it with the
//! proxy's own code, printing the verdict, the Server, the authorization or
//! route that decided, and every rule looked at.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::json;
use tessera_policy::{Client, Decision, HttpRequestInfo, PodInboundPolicy, Verdict};

/// `tessera policy` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Kubeconfig of the tessera server (default: KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<PathBuf>,
    /// Print the decision as JSON.
    #[arg(short = 'o', long, global = true, default_value = "text", value_parser = ["text", "json"])]
    output: String,
    #[command(subcommand)]
    action: PolicyAction,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyAction {
    /// Would a client be let in to a pod's port (or HTTP request), and which rule decides?
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["from_identity", "from_serviceaccount", "unauthenticated"])))]
struct ExplainArgs {
    /// The pod's namespace.
    #[arg(short = 'n', long)]
    namespace: String,
    /// The pod.
    #[arg(long)]
    pod: String,
    /// The pod's port.
    #[arg(long)]
    port: u16,
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

async fn fetch(args: &PolicyArgs, namespace: &str, pod: &str) -> anyhow::Result<PodInboundPolicy> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    let path = format!("/tessera/v1/policy/inbound?namespace={}&pod={}", encode(namespace), encode(pod));
    let request = http::Request::get(&path).body(Vec::new())?;
    // The server's refusal (403, 404, 400) is the message to show.
    let text = client.request_text(request).await.map_err(|err| match err {
        kube::Error::Api(status) => anyhow::anyhow!("{}", status.message),
        other => anyhow::Error::new(other).context(format!("GET {path}")),
    })?;
    serde_json::from_str(&text).context("decoding the inbound policy")
}

fn client_of(e: &ExplainArgs, policy: &PodInboundPolicy) -> anyhow::Result<Client> {
    let identity = match (&e.from_identity, &e.from_serviceaccount) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(sa)) => {
            let (ns, name) = sa.split_once('/').filter(|(ns, name)| !ns.is_empty() && !name.is_empty()).context("--from-serviceaccount must be NAMESPACE/NAME")?;
            Some(format!("{name}.{ns}.serviceaccount.identity.{}.{}", e.identity_control_namespace, e.identity_trust_domain))
        }
        (None, None) => None,
    };
    // A client inside the cluster unless told otherwise.
    let addr = e.from_ip.or_else(|| policy.cluster_networks.first().map(|n| first_host(n))).unwrap_or(IpAddr::from([10, 0, 0, 1]));
    Ok(Client { identity, addr })
}

fn first_host(net: &ipnet::IpNet) -> IpAddr {
    net.hosts().next().unwrap_or(net.addr())
}

fn headers_of(list: &[String]) -> anyhow::Result<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for h in list {
        let (k, v) = h.split_once('=').with_context(|| format!("--header {h:?}: expected NAME=VALUE"))?;
        let name = http::HeaderName::from_bytes(k.trim().as_bytes()).with_context(|| format!("--header {h:?}: invalid header name"))?;
        let value = http::HeaderValue::from_str(v).with_context(|| format!("--header {h:?}: invalid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn explain(e: &ExplainArgs, policy: &PodInboundPolicy) -> anyhow::Result<(Client, Option<(String, String)>, Decision)> {
    let client = client_of(e, policy)?;
    let headers = headers_of(&e.headers)?;
    let is_http = e.method.is_some() || e.path.is_some() || !e.headers.is_empty();
    let method = e.method.clone().unwrap_or_else(|| "GET".into());
    let path = e.path.clone().unwrap_or_else(|| "/".into());
    let decision = if is_http {
        policy.evaluate(e.port, &client, Some(&HttpRequestInfo { method: &method, path: &path, headers: &headers }))
    } else {
        policy.evaluate(e.port, &client, None)
    };
    Ok((client, is_http.then_some((method, path)), decision))
}

pub(crate) async fn run(args: PolicyArgs) -> anyhow::Result<i32> {
    let PolicyAction::Explain(e) = &args.action;
    let policy = fetch(&args, &e.namespace, &e.pod).await?;
    let (client, request, decision) = explain(e, &policy)?;
    if args.output == "json" {
        let answer = json!({
            "pod": {"namespace": policy.namespace, "name": policy.pod, "port": e.port},
            "client": {"identity": client.identity, "address": client.addr.to_string()},
            "request": request.as_ref().map(|(m, p)| json!({"method": m, "path": p})),
            "decision": decision,
        });
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", render(&policy, e.port, &decision));
    }
    Ok(if decision.verdict == Verdict::Deny { 1 } else { 0 })
}

/// The shape of `tessera rbac explain`: verdict and reason, what decided, then why.
fn render(policy: &PodInboundPolicy, port: u16, d: &Decision) -> String {
    let verdict = match d.verdict {
        Verdict::Allow => "ALLOWED",
        Verdict::Deny => "DENIED",
        Verdict::AuditDeny => "AUDIT (allowed; would be denied)",
    };
    let mut out = format!("{verdict}  {}\n\n", d.reason);
    let server = match &d.server {
        Some(s) => format!("Server {s}"),
        None => format!("none (default policy {})", policy.default_policy),
    };
    out.push_str(&format!("pod:           {}/{} port {port}\n", policy.namespace, policy.pod));
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PolicyArgs,
    }

    fn parse(argv: &[&str]) -> Result<PolicyArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("policy").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn policy() -> PodInboundPolicy {
        serde_json::from_value(json!({"namespace": "shop", "pod": "db-0", "defaultPolicy": "deny", "clusterNetworks": ["10.0.0.0/8"],
            "ports": [{"port": 8080, "server": "db-http", "proxyProtocol": "HTTP/1", "accessPolicy": null, "routes": [],
                "authorizations": [{"kind": "AuthorizationPolicy", "name": "api", "networks": [{"net": "0.0.0.0/0"}],
                    "authentication": {"identities": [{"exact": "api.shop.serviceaccount.identity.linkerd.cluster.local"}]}}]}]}))
        .unwrap()
    }

    #[test]
    fn one_client_kind_is_required() {
        assert!(parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080"]).is_err());
        assert!(parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--unauthenticated", "--from-identity", "x"]).is_err());
        assert!(parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--unauthenticated"]).is_ok());
    }

    #[test]
    fn explains_allow_and_deny() {
        let p = policy();
        let args = parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--from-serviceaccount", "shop/api", "--method", "GET", "--path", "/x"]).unwrap();
        let PolicyAction::Explain(e) = &args.action;
        let (client, request, d) = explain(e, &p).unwrap();
        assert_eq!(client.addr.to_string(), "10.0.0.1");
        assert_eq!(request, Some(("GET".into(), "/x".into())));
        assert_eq!(d.verdict, Verdict::Allow);
        let text = render(&p, 8080, &d);
        assert!(text.starts_with("ALLOWED  authorized by AuthorizationPolicy/api\n"), "{text}");
        assert!(text.contains("server:        Server db-http\n") && text.contains("authorization: AuthorizationPolicy/api\n"), "{text}");

        let args = parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--from-serviceaccount", "shop/web"]).unwrap();
        let PolicyAction::Explain(e) = &args.action;
        let (_, request, d) = explain(e, &p).unwrap();
        assert_eq!((request, d.verdict), (None, Verdict::Deny));
        let text = render(&p, 8080, &d);
        assert!(text.starts_with("DENIED  unauthorized connection on server/db-http\n"), "{text}");
        assert!(text.contains("  × AuthorizationPolicy/api: identity not matched: web.shop.serviceaccount.identity.linkerd.cluster.local is not in [api.shop.serviceaccount.identity.linkerd.cluster.local]\n"), "{text}");

        let args = parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "9", "--unauthenticated", "--from-ip", "192.0.2.1"]).unwrap();
        let PolicyAction::Explain(e) = &args.action;
        let (_, _, d) = explain(e, &p).unwrap();
        assert!(render(&p, 9, &d).contains("server:        none (default policy deny)\n"));
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let p = policy();
        let args = parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--from-serviceaccount", "api"]).unwrap();
        let PolicyAction::Explain(e) = &args.action;
        assert_eq!(explain(e, &p).unwrap_err().to_string(), "--from-serviceaccount must be NAMESPACE/NAME");
        let args = parse(&["explain", "-n", "shop", "--pod", "db-0", "--port", "8080", "--unauthenticated", "--header", "x"]).unwrap();
        let PolicyAction::Explain(e) = &args.action;
        assert_eq!(explain(e, &p).unwrap_err().to_string(), "--header \"x\": expected NAME=VALUE");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
