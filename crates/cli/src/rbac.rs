//! `tessera rbac explain` and `tessera rbac who-can`: clients of the server's
//! `/tessera/v1/rbac/*` API, printed for a reviewer to read at a glance.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{Value, json};

/// `tessera rbac` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct RbacArgs {
    /// Kubeconfig of the tessera server (default: KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the request (omit for cluster scope).
    #[arg(short = 'n', long, global = true, default_value = "")]
    namespace: String,
    /// Print the server's JSON answer.
    #[arg(short = 'o', long, global = true, default_value = "text", value_parser = ["text", "json"])]
    output: String,
    #[command(subcommand)]
    action: RbacAction,
}

#[derive(Debug, clap::Subcommand)]
enum RbacAction {
    /// Why is SUBJECT allowed or denied VERB on RESOURCE? Every matching rule, or the nearest misses.
    Explain {
        /// The user: a name, or `system:serviceaccount:NS:NAME`.
        #[arg(long = "as")]
        subject: String,
        /// Extra groups of the user.
        #[arg(long = "as-group")]
        groups: Vec<String>,
        /// Verb, e.g. `get`, `create`.
        verb: String,
        /// Resource (`pods`, `serviceaccounts/token`, `roles.rbac.authorization.k8s.io`) or a path (`/healthz`).
        resource: String,
        /// Object name.
        name: Option<String>,
    },
    /// Every subject allowed VERB on RESOURCE, and through which binding.
    WhoCan {
        /// Verb.
        verb: String,
        /// Resource or path, as for explain.
        resource: String,
        /// Object name.
        name: Option<String>,
    },
}

/// `pods` → ("pods", ""), `roles.rbac.authorization.k8s.io` → ("roles", "rbac…"), `/healthz` unchanged.
fn split_resource(resource: &str) -> (String, String) {
    if resource.starts_with('/') {
        return (resource.to_owned(), String::new());
    }
    let (base, sub) = match resource.split_once('/') {
        Some((b, s)) => (b, Some(s)),
        None => (resource, None),
    };
    let (plural, group) = base.split_once('.').unwrap_or((base, ""));
    let plural = match sub {
        Some(s) => format!("{plural}/{s}"),
        None => plural.to_owned(),
    };
    (plural, group.to_owned())
}

async fn call(args: &RbacArgs, path: &str, body: Value) -> anyhow::Result<Value> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    let request = http::Request::post(path).header("content-type", "application/json").body(serde_json::to_vec(&body)?)?;
    // The server's refusal (an unknown or ambiguous resource) is the message to show.
    let text = client.request_text(request).await.map_err(|err| match err {
        kube::Error::Api(status) => anyhow::anyhow!("{}", status.message),
        other => anyhow::Error::new(other).context(format!("POST {path}")),
    })?;
    Ok(serde_json::from_str(&text)?)
}

pub(crate) async fn run(args: RbacArgs) -> anyhow::Result<i32> {
    match &args.action {
        RbacAction::Explain { subject, groups, verb, resource, name } => {
            let (resource, group) = split_resource(resource);
            let body = json!({"user": subject, "groups": groups, "verb": verb, "resource": resource, "group": group, "namespace": args.namespace, "name": name.clone().unwrap_or_default()});
            let answer = call(&args, "/tessera/v1/rbac/explain", body).await?;
            if args.output == "json" {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", render_explain(&answer));
            }
            Ok(if answer["allowed"] == true { 0 } else { 1 })
        }
        RbacAction::WhoCan { verb, resource, name } => {
            let (resource, group) = split_resource(resource);
            let body = json!({"verb": verb, "resource": resource, "group": group, "namespace": args.namespace, "name": name.clone().unwrap_or_default()});
            let answer = call(&args, "/tessera/v1/rbac/who-can", body).await?;
            if args.output == "json" {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", render_who_can(&answer));
            }
            Ok(0)
        }
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn render_explain(answer: &Value) -> String {
    let mut out = String::new();
    let allowed = answer["allowed"] == true;
    out.push_str(&format!("{}  {}\n", if allowed { "ALLOWED" } else { "DENIED" }, s(answer, "reason")));
    let matches = answer["matches"].as_array().cloned().unwrap_or_default();
    if !matches.is_empty() {
        out.push_str("\nmatching rules:\n");
        for m in &matches {
            out.push_str(&format!("  ✔ {} → {} (subject {})\n      {}\n", s(m, "binding"), s(m, "role"), s(m, "subject"), s(m, "rule")));
        }
    }
    let misses = answer["near_misses"].as_array().cloned().unwrap_or_default();
    if !allowed {
        if misses.is_empty() {
            out.push_str("\nno binding names this user or their groups\n");
        } else {
            out.push_str("\nnearest rules (why they do not apply):\n");
            for m in &misses {
                out.push_str(&format!("  × {} → {} (subject {})\n", s(m, "binding"), s(m, "role"), s(m, "subject")));
                if !s(m, "rule").is_empty() {
                    out.push_str(&format!("      {}\n", s(m, "rule")));
                }
                out.push_str(&format!("      {}\n", s(m, "why_not")));
            }
        }
    }
    out
}

fn render_who_can(answer: &Value) -> String {
    let grants = answer["grants"].as_array().cloned().unwrap_or_default();
    let rows: Vec<[String; 4]> = grants.iter().map(|g| [s(g, "kind").to_owned(), s(g, "name").to_owned(), s(g, "binding").to_owned(), s(g, "role").to_owned()]).collect();
    let header = ["KIND", "SUBJECT", "BINDING", "ROLE"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |row: &[String; 4]| format!("{:w0$}  {:w1$}  {:w2$}  {}\n", row[0], row[1], row[2], row[3], w0 = widths[0], w1 = widths[1], w2 = widths[2]);
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_split_like_kubectl() {
        assert_eq!(split_resource("pods"), ("pods".into(), "".into()));
        assert_eq!(split_resource("serviceaccounts/token"), ("serviceaccounts/token".into(), "".into()));
        assert_eq!(split_resource("roles.rbac.authorization.k8s.io"), ("roles".into(), "rbac.authorization.k8s.io".into()));
        assert_eq!(split_resource("/healthz"), ("/healthz".into(), "".into()));
    }
}
