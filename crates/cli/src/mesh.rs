//! `tessera edges` and `tessera tap`: seeing the mesh, as `linkerd viz edges`
//! and `linkerd viz tap` show it.
//!
//! Both find the meshed pods through the API (annotation `linkerd.io/inject:
//! enabled`, `status.podIP`, and `tessera.io/proxy-admin-port` for the
//! proxy's admin port), then talk to each proxy's admin port: `edges` reads
//! `/metrics` (the outbound series name the destination pod, its namespace
//! and the connection's `tls`), `tap` streams `/tap` with the user's own
//! bearer token, which each proxy checks with the API before it streams.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tessera_proxy::exposition::parse_sample;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

const INJECT_ANNOTATION: &str = "linkerd.io/inject";
const ADMIN_PORT_ANNOTATION: &str = "tessera.io/proxy-admin-port";
/// How long one proxy may take to answer `/metrics` or start `/tap`.
const PROXY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `/metrics` page read.
const MAX_METRICS: u64 = 16 << 20;

/// Flags shared by `edges` and `tap`.
#[derive(Debug, clap::Args)]
pub(crate) struct MeshClientArgs {
    /// Kubeconfig of the tessera server (default: KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// `tessera edges` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct EdgesArgs {
    #[command(flatten)]
    client: MeshClientArgs,
    /// Only edges with an end in this namespace (default: every namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// `tessera tap` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct TapArgs {
    #[command(flatten)]
    client: MeshClientArgs,
    /// Namespace of the pods to tap.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The pod to tap (default: every meshed pod of the namespace).
    pod: Option<String>,
    /// Bearer token the proxies check (default: the kubeconfig user's token).
    #[arg(long, env = "TESSERA_TAP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Stop after this many events (default: stream until interrupted).
    #[arg(long)]
    max_events: Option<u64>,
}

/// A meshed pod and its proxy's admin address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MeshedPod {
    namespace: String,
    name: String,
    admin: SocketAddr,
}

async fn config(args: &MeshClientArgs) -> anyhow::Result<kube::Config> {
    Ok(match &args.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    })
}

/// The running meshed pods (in `namespace`, or all), with their proxy's admin address.
async fn meshed_pods(client: kube::Client, namespace: Option<&str>) -> anyhow::Result<Vec<MeshedPod>> {
    let pods: kube::Api<Pod> = match namespace {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::all(client),
    };
    let list = pods.list(&kube::api::ListParams::default()).await.context("listing pods")?;
    Ok(list.items.iter().filter_map(meshed).collect())
}

fn meshed(pod: &Pod) -> Option<MeshedPod> {
    let annotations = pod.metadata.annotations.as_ref()?;
    if annotations.get(INJECT_ANNOTATION).map(String::as_str) != Some("enabled") {
        return None;
    }
    let port: u16 = annotations.get(ADMIN_PORT_ANNOTATION)?.parse().ok()?;
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: std::net::IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    Some(MeshedPod { namespace: pod.metadata.namespace.clone()?, name: pod.metadata.name.clone()?, admin: SocketAddr::new(ip, port) })
}

/// Sends an HTTP/1.0 GET to a proxy's admin port (so the answer is never
/// chunked: a plain body, or a stream that ends when the proxy closes);
/// returns the status, the headers' end and the open stream.
async fn admin_get(admin: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<(u16, tokio::io::BufReader<tokio::net::TcpStream>)> {
    let stream = tokio::time::timeout(PROXY_TIMEOUT, tokio::net::TcpStream::connect(admin))
        .await
        .with_context(|| format!("connecting to {admin}: timed out"))?
        .with_context(|| format!("connecting to {admin}"))?;
    let mut stream = tokio::io::BufReader::new(stream);
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.get_mut().write_all(request.as_bytes()).await?;
    let head = async {
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await?;
        let code: u16 = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("not an HTTP answer: {status_line:?}"))?;
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header).await? == 0 || header.trim().is_empty() {
                break;
            }
        }
        anyhow::Ok(code)
    };
    let code = tokio::time::timeout(PROXY_TIMEOUT, head).await.with_context(|| format!("GET {path} from {admin}: no answer"))??;
    Ok((code, stream))
}

async fn read_body(mut stream: tokio::io::BufReader<tokio::net::TcpStream>) -> anyhow::Result<String> {
    let mut body = String::new();
    tokio::time::timeout(PROXY_TIMEOUT, (&mut stream).take(MAX_METRICS).read_to_string(&mut body)).await.context("reading the answer: timed out")??;
    Ok(body)
}

/// One row of `tessera edges`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    src: String,
    dst: String,
    src_ns: String,
    dst_ns: String,
    /// The `tls` labels seen: secured only if every one is `true`.
    tls: std::collections::BTreeSet<String>,
}

/// The edges from `src`'s outbound series: one per destination pod.
fn edges_from_metrics(src: &MeshedPod, metrics: &str) -> Vec<Edge> {
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for (name, labels, value) in metrics.lines().filter_map(parse_sample) {
        if !matches!(name, "tcp_open_total" | "request_total" | "response_total") || value <= 0.0 {
            continue;
        }
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        if label("direction") != "outbound" || label("dst_pod").is_empty() {
            continue;
        }
        let edge = edges.entry((label("dst_namespace"), label("dst_pod"))).or_insert_with(|| Edge {
            src: src.name.clone(),
            dst: label("dst_pod"),
            src_ns: src.namespace.clone(),
            dst_ns: label("dst_namespace"),
            tls: Default::default(),
        });
        edge.tls.insert(label("tls"));
    }
    edges.into_values().collect()
}

fn render_edges(edges: &[Edge]) -> String {
    let unsecured = edges.iter().any(|e| !is_secured(e));
    let mut header: Vec<String> = ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED"].map(str::to_owned).to_vec();
    if unsecured {
        header.push("MSG".into());
    }
    let mut rows = vec![header];
    for edge in edges {
        let mut row = vec![edge.src.clone(), edge.dst.clone(), edge.src_ns.clone(), edge.dst_ns.clone()];
        if is_secured(edge) {
            row.push("√".into());
            if unsecured {
                row.push(String::new());
            }
        } else {
            row.push("×".into());
            let why: Vec<&str> = edge.tls.iter().filter(|t| *t != "true").map(String::as_str).collect();
            row.push(format!("plain text (tls={})", why.join(",")));
        }
        rows.push(row);
    }
    crate::columns::render(&rows)
}

fn is_secured(edge: &Edge) -> bool {
    !edge.tls.is_empty() && edge.tls.iter().all(|t| t == "true")
}

/// `tessera edges`.
pub(crate) async fn edges(args: EdgesArgs) -> anyhow::Result<i32> {
    let client = kube::Client::try_from(config(&args.client).await?)?;
    // Every meshed pod is a possible source: an edge into NS may start anywhere.
    let pods = meshed_pods(client, None).await?;
    let mut edges = Vec::new();
    for pod in &pods {
        let scraped = async {
            let (code, stream) = admin_get(pod.admin, "/metrics", None).await?;
            anyhow::ensure!(code == 200, "GET /metrics answered {code}");
            read_body(stream).await
        };
        match scraped.await {
            Ok(metrics) => edges.extend(edges_from_metrics(pod, &metrics)),
            Err(e) => eprintln!("warning: {}/{}: proxy at {} not scraped: {e:#}", pod.namespace, pod.name, pod.admin),
        }
    }
    if let Some(ns) = &args.namespace {
        edges.retain(|e| &e.src_ns == ns || &e.dst_ns == ns);
    }
    edges.sort();
    if edges.is_empty() {
        match &args.namespace {
            Some(ns) => eprintln!("No edges found in namespace {ns}."),
            None => eprintln!("No edges found."),
        }
        return Ok(0);
    }
    print!("{}", render_edges(&edges));
    Ok(0)
}

/// One `/tap` event as `linkerd viz tap` prints it; `stream` numbers the pod.
fn render_event(stream: usize, event: &Value) -> Option<String> {
    let s = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or_default();
    let id = s("id").rsplit(':').next().unwrap_or_default();
    // `in ` is padded to the width of `out`, as Linkerd prints it.
    let proxy = if s("proxy") == "in" { "in " } else { "out" };
    let common = format!("id={stream}:{id} proxy={proxy} src={} dst={} tls={}", s("src"), s("dst"), s("tls"));
    match s("type") {
        "req" => Some(format!("req {common} :method={} :authority={} :path={}", s("method"), s("authority"), s("path"))),
        "rsp" => Some(format!(
            "rsp {common} :status={} latency={}µs",
            event.get("status").and_then(Value::as_u64).unwrap_or(0),
            event.get("latencyMicros").and_then(Value::as_u64).unwrap_or(0)
        )),
        "deny" => {
            let what = if s("method").is_empty() { String::new() } else { format!(" :method={} :path={}", s("method"), s("path")) };
            let server = if s("server").is_empty() { "default policy".to_owned() } else { format!("server/{}", s("server")) };
            Some(format!("deny {common}{what} denied by {server}: {}", s("reason")))
        }
        _ => None,
    }
}

/// The user's bearer token: `--token`, else the kubeconfig user's.
async fn user_token(args: &TapArgs) -> anyhow::Result<String> {
    if let Some(token) = &args.token {
        return Ok(token.trim().to_owned());
    }
    let config = config(&args.client).await?;
    use secrecy::ExposeSecret as _;
    if let Some(token) = &config.auth_info.token {
        return Ok(token.expose_secret().to_owned());
    }
    if let Some(file) = &config.auth_info.token_file {
        return Ok(std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?.trim().to_owned());
    }
    anyhow::bail!(
        "tap needs a bearer token: each proxy asks the API whether its holder may tap (the kubeconfig user has none; pass --token, e.g. $(kubectl create token SA))"
    )
}

/// `tessera tap`.
pub(crate) async fn tap(args: TapArgs) -> anyhow::Result<i32> {
    let token = user_token(&args).await?;
    let client = kube::Client::try_from(config(&args.client).await?)?;
    let mut pods = meshed_pods(client, Some(&args.namespace)).await?;
    if let Some(name) = &args.pod {
        pods.retain(|p| &p.name == name);
        anyhow::ensure!(!pods.is_empty(), "pod {}/{name} is not a running meshed pod", args.namespace);
    }
    anyhow::ensure!(!pods.is_empty(), "no running meshed pods in namespace {}", args.namespace);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<String, String>>(256);
    for (stream, pod) in pods.into_iter().enumerate() {
        let (tx, token) = (tx.clone(), token.clone());
        tokio::spawn(async move {
            let result = async {
                let (code, mut reader) = admin_get(pod.admin, "/tap", Some(&token)).await?;
                if code != 200 {
                    let body = read_body(reader).await.unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["message"].as_str().map(str::to_owned)).unwrap_or(body);
                    anyhow::bail!("{code}: {message}");
                }
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                    if let Some(text) = render_event(stream, &event)
                        && tx.send(Ok(text)).await.is_err()
                    {
                        return Ok(());
                    }
                }
            };
            if let Err(e) = result.await {
                let _ = tx.send(Err(format!("{}/{}: {e:#}", pod.namespace, pod.name))).await;
            }
        });
    }
    drop(tx);
    let (mut printed, mut failures) = (0u64, 0usize);
    let mut stdout = std::io::stdout();
    while let Some(item) = rx.recv().await {
        match item {
            Ok(text) => {
                use std::io::Write as _;
                // A closed pipe (`| head`) ends the tap quietly.
                if writeln!(stdout, "{text}").and_then(|()| stdout.flush()).is_err() {
                    return Ok(0);
                }
                printed += 1;
                if args.max_events.is_some_and(|max| printed >= max) {
                    return Ok(0);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
            }
        }
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> MeshedPod {
        MeshedPod { namespace: "api".into(), name: "api-0".into(), admin: "127.1.2.3:4191".parse().unwrap() }
    }

    #[test]
    fn the_agent_starts_the_proxy_with_flags_the_proxy_takes() {
        use clap::Parser as _;
        let launch = tessera_agent::mesh::ProxyLaunch::sample();
        let argv = ["tessera".to_owned(), "proxy".to_owned()].into_iter().chain(launch.args());
        let crate::Command::Proxy(args) = crate::Cli::try_parse_from(argv).expect("the proxy's flags").command else { panic!("not proxy") };
        let config = args.config();
        assert_eq!(config.inbound[0].listen, "127.9.8.7:8080".parse().unwrap());
        assert_eq!(config.inbound[0].app, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(config.admin_addr, "127.9.8.7:4191".parse().unwrap());
        assert_eq!(config.outbound_addr, Some("127.0.0.1:40001".parse().unwrap()));
        assert_eq!((config.namespace.as_deref(), config.pod.as_deref()), (Some("api"), Some("api-0")));
        assert!(config.policy, "the agent has its proxy enforce inbound policy");
        assert_eq!(config.api.token_file, Some("/r/var/run/secrets/kubernetes.io/serviceaccount/token".into()));
    }

    #[test]
    fn edges_come_from_outbound_series_and_print_as_linkerd_prints_them() {
        let metrics = r#"
# TYPE tcp_open_total counter
tcp_open_total{direction="outbound",tls="true",server_id="data-store.data-store.serviceaccount.identity.linkerd.cluster.local",dst_namespace="data-store",dst_pod="data-store-0",dst_serviceaccount="data-store"} 2
request_total{direction="outbound",tls="true",dst_namespace="data-store",dst_pod="data-store-0"} 5
request_total{direction="inbound",tls="true",client_id="x"} 9
request_total{direction="outbound",tls="no_identity",dst_namespace="legacy",dst_pod="legacy-0"} 1
request_total{direction="outbound",tls="true",dst_namespace="other",dst_pod="other-0"} 0
"#;
        let edges = edges_from_metrics(&pod(), metrics);
        assert_eq!(edges.len(), 2);
        assert_eq!(
            render_edges(&edges),
            "SRC     DST            SRC_NS   DST_NS       SECURED   MSG\n\
             api-0   data-store-0   api      data-store   √\n\
             api-0   legacy-0       api      legacy       ×         plain text (tls=no_identity)\n"
        );
        assert_eq!(render_edges(&edges[..1]), "SRC     DST            SRC_NS   DST_NS       SECURED\napi-0   data-store-0   api      data-store   √\n");
    }

    #[test]
    fn tap_lines_have_linkerds_shape() {
        let req = serde_json::json!({"type": "req", "id": "0:7", "proxy": "in", "src": "127.1.0.2:47130", "dst": "127.1.0.3:8080", "tls": "true",
            "method": "GET", "authority": "web-svc.emojivoto:80", "path": "/api/list"});
        assert_eq!(
            render_event(1, &req).unwrap(),
            "req id=1:7 proxy=in  src=127.1.0.2:47130 dst=127.1.0.3:8080 tls=true :method=GET :authority=web-svc.emojivoto:80 :path=/api/list"
        );
        let rsp = serde_json::json!({"type": "rsp", "id": "0:7", "proxy": "out", "src": "127.1.0.2:47130", "dst": "127.1.0.3:8080", "tls": "true",
            "status": 200, "latencyMicros": 2731});
        assert_eq!(render_event(0, &rsp).unwrap(), "rsp id=0:7 proxy=out src=127.1.0.2:47130 dst=127.1.0.3:8080 tls=true :status=200 latency=2731µs");
        let deny = serde_json::json!({"type": "deny", "id": "0:8", "proxy": "in", "src": "127.1.0.4:5000", "dst": "127.1.0.3:8080", "tls": "true",
            "method": "GET", "authority": "x", "path": "/data", "server": "data-store-http", "reason": "unauthorized request on route"});
        assert_eq!(
            render_event(0, &deny).unwrap(),
            "deny id=0:8 proxy=in  src=127.1.0.4:5000 dst=127.1.0.3:8080 tls=true :method=GET :path=/data denied by server/data-store-http: unauthorized request on route"
        );
    }

    #[test]
    fn only_running_annotated_pods_with_an_address_are_meshed() {
        let pod = |annotations: Value, phase: &str, ip: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "n", "annotations": annotations},
                "status": {"phase": phase, "podIP": ip}}))
            .unwrap()
        };
        let meshed_annotations = serde_json::json!({"linkerd.io/inject": "enabled", "tessera.io/proxy-admin-port": "4191"});
        assert_eq!(meshed(&pod(meshed_annotations.clone(), "Running", "127.4.5.6")).unwrap().admin, "127.4.5.6:4191".parse().unwrap());
        assert!(meshed(&pod(meshed_annotations.clone(), "Pending", "127.4.5.6")).is_none());
        assert!(meshed(&pod(meshed_annotations, "Running", "")).is_none());
        assert!(meshed(&pod(serde_json::json!({"linkerd.io/inject": "disabled", "tessera.io/proxy-admin-port": "4191"}), "Running", "127.4.5.6")).is_none());
    }
}
