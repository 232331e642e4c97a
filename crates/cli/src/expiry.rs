//! `tessera expiry`: one timeline of everything that expires, from the
//! server's `/tessera/v1/expiry` plus what only the client sees (its
//! kubeconfig's client certificate, an issuer kept in files), judged by the
//! same rules and printed sorted by date.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use tessera_apiserver::expiry::{Item, Kind, Rules, Timeline, certs, item};

/// Exit code when something on the timeline has already expired.
pub(crate) const EXIT_EXPIRED: i32 = 3;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// A table: WHEN, IN, KIND, NAME, OWNER, WARNING.
    Table,
    /// The timeline as JSON (`{now, items, notes}`).
    Json,
}

/// `tessera expiry` flags.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when nothing has expired (warnings included), 3 when at least one item has expired, 1 on errors (e.g. the server refused: RBAC `get` on the non-resource URL /tessera/v1/expiry is needed, cluster admins have it)."
)]
pub(crate) struct ExpiryArgs {
    /// Kubeconfig of the tessera server (default: KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// The mesh issuer's certificate (PEM file), when it is kept in files the server cannot see.
    #[arg(long)]
    issuer_cert: Option<PathBuf>,
}

async fn kube_config(path: Option<&PathBuf>) -> anyhow::Result<kube::Config> {
    Ok(match path {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    })
}

/// The kubeconfig user's client certificate (PEM), if it has one.
fn client_certificate(config: &kube::Config) -> anyhow::Result<Option<String>> {
    use base64::Engine as _;
    let auth = &config.auth_info;
    if let Some(data) = &auth.client_certificate_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .context("client-certificate-data is not base64")?;
        return Ok(Some(String::from_utf8(pem).context("client-certificate-data is not PEM")?));
    }
    match &auth.client_certificate {
        Some(path) => Ok(Some(
            std::fs::read_to_string(path).with_context(|| format!("reading client-certificate {path}"))?,
        )),
        None => Ok(None),
    }
}

/// Items only the client can see, judged with the server's default rules.
fn client_items(config: &kube::Config, issuer_cert: Option<&PathBuf>, now: i64) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    if let Some(pem) = client_certificate(config)? {
        items.extend(certs::items(Kind::ClientCertificate, &pem, "your kubeconfig (client certificate)").context("the kubeconfig's client certificate")?);
    }
    if let Some(path) = issuer_cert {
        let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut issuer = certs::items(Kind::Issuer, &pem, &format!("issuer file {}", path.display())).with_context(|| path.display().to_string())?;
        // The first certificate is the issuer; the rest is its chain.
        issuer.truncate(1);
        items.extend(issuer);
    }
    let rules = Rules {
        warn_within: tessera_identity::check::WARN_WITHIN,
        ..Rules::default()
    };
    Ok(items.into_iter().map(|i| i.judge(&rules, now)).collect())
}

async fn fetch(config: kube::Config) -> anyhow::Result<Timeline> {
    let client = kube::Client::try_from(config)?;
    let request = http::Request::get(tessera_apiserver::expiry::PATH).body(Vec::new())?;
    match client.request::<Timeline>(request).await {
        Ok(timeline) => Ok(timeline),
        Err(kube::Error::Api(status)) => anyhow::bail!("{} (HTTP {})", status.message, status.code),
        Err(e) => Err(e).with_context(|| format!("GET {}", tessera_apiserver::expiry::PATH)),
    }
}

/// Runs the command; returns the exit code.
pub(crate) async fn run(args: ExpiryArgs) -> anyhow::Result<i32> {
    let config = kube_config(args.kubeconfig.as_ref()).await?;
    let mut timeline = fetch(config.clone()).await?;
    let now = timeline.now.map_or_else(|| jiff::Timestamp::now().as_second(), jiff::Timestamp::as_second);
    timeline.items.extend(client_items(&config, args.issuer_cert.as_ref(), now)?);
    item::sort(&mut timeline.items);
    let text = match args.output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&timeline)?),
        Output::Table => table(&timeline, now),
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    if args.output == Output::Table {
        for note in &timeline.notes {
            eprintln!("note: {note}");
        }
    }
    Ok(if timeline.items.iter().any(|i| i.expired(now)) { EXIT_EXPIRED } else { 0 })
}

fn when(item: &Item) -> String {
    match (item.not_after, item.never_expires) {
        (Some(t), _) => t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        (None, true) => "never".to_owned(),
        (None, false) => "unknown".to_owned(),
    }
}

fn remaining(item: &Item, now: i64) -> String {
    match item.not_after {
        Some(t) if t.as_second() <= now => format!("-{}", item::human(now - t.as_second())),
        Some(t) => item::human(t.as_second() - now),
        None => match item.age_seconds {
            Some(age) if item.never_expires => format!("age {}", item::human(age)),
            _ => "-".to_owned(),
        },
    }
}

/// The timeline as an aligned table.
pub(crate) fn table(timeline: &Timeline, now: i64) -> String {
    let mut rows = vec![["WHEN", "IN", "KIND", "NAME", "OWNER", "WARNING"].map(str::to_owned)];
    for i in &timeline.items {
        let name = match &i.namespace {
            Some(ns) => format!("{ns}/{}", i.name),
            None => i.name.clone(),
        };
        rows.push([
            when(i),
            remaining(i, now),
            i.kind.as_str().to_owned(),
            name,
            i.owner.clone(),
            i.warning.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_follow_the_timeline() {
        let now = 1_800_000_000;
        let at = |s| jiff::Timestamp::from_second(s).ok();
        let timeline = Timeline {
            now: at(now),
            items: vec![
                Item {
                    not_after: at(now - 60),
                    warning: Some("expired 1m0s ago".into()),
                    ..Item::new(Kind::ProxyLeaf, "api-0", "proxy")
                },
                Item {
                    not_after: at(now + 20 * 86400),
                    ..Item::new(Kind::Issuer, "identity", "issuer Secret")
                },
                Item {
                    namespace: Some("api".into()),
                    age_seconds: Some(3 * 86400),
                    never_expires: true,
                    warning: Some("legacy".into()),
                    ..Item::new(Kind::LegacyToken, "api-token", "ServiceAccount api/api")
                },
            ],
            notes: vec![],
        };
        let text = table(&timeline, now);
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split("   ").map(str::trim).filter(|c| !c.is_empty()).collect()).collect();
        assert_eq!(rows[0], ["WHEN", "IN", "KIND", "NAME", "OWNER", "WARNING"], "{text}");
        assert_eq!(rows[1], ["2027-01-15 07:59 UTC", "-1m0s", "proxy-leaf", "api-0", "proxy", "expired 1m0s ago"], "{text}");
        assert_eq!(rows[2], ["2027-02-04 08:00 UTC", "20d0h", "issuer", "identity", "issuer Secret", "-"], "{text}");
        assert_eq!(rows[3], ["never", "age 3d0h", "legacy-token", "api/api-token", "ServiceAccount api/api", "legacy"], "{text}");
    }
}
