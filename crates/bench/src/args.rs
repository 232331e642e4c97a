//! `tessera bench` command-line arguments (the `clap` feature): parsed by the
//! binary, turned into a [`BenchConfig`] here.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValuesParser;

use crate::config::{BenchConfig, Limit, ScenarioOptions};
use crate::error::Result;

/// Load-test a Kubernetes-compatible API server (tessera or any other) through a
/// kubeconfig: prepares a temporary namespace, warms up, measures, prints
/// throughput, latency percentiles and errors by status, and cleans up.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(env = "TESSERA_BENCH_SCENARIO", value_parser = scenario_names())]
    pub scenario: String,
    /// kubeconfig of the API server to measure.
    #[arg(long, env = "TESSERA_BENCH_KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Context of the kubeconfig to use (default: its current-context).
    #[arg(long, env = "TESSERA_BENCH_CONTEXT")]
    pub context: Option<String>,
    /// Concurrent workers, each with its own connection.
    #[arg(long, env = "TESSERA_BENCH_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// How long to measure, e.g. `10s`, `1m` (the default is 10s unless --requests is given).
    #[arg(long, env = "TESSERA_BENCH_DURATION", value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Measure exactly this many requests instead of a duration.
    #[arg(long, env = "TESSERA_BENCH_REQUESTS")]
    pub requests: Option<u64>,
    /// Unmeasured warm-up before measuring, e.g. `1s` (`0s` for none).
    #[arg(long, env = "TESSERA_BENCH_WARMUP", value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Open loop: send this many requests per second whatever the latency, and
    /// count latency from when each was due (default: closed loop).
    #[arg(long, env = "TESSERA_BENCH_RATE")]
    pub rate: Option<f64>,
    /// Summary format.
    #[arg(long, env = "TESSERA_BENCH_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// list-sa, get-sa: ServiceAccounts to create before measuring; lease-renew: Leases, one per holder.
    #[arg(long, env = "TESSERA_BENCH_OBJECTS", default_value_t = 100)]
    pub objects: usize,
    /// watch-fanout: concurrent watchers that must each receive every event.
    #[arg(long, env = "TESSERA_BENCH_WATCHERS", default_value_t = 10)]
    pub watchers: usize,
    /// tokenreview-uncached: tokens to mint before measuring (default: --requests, or 20000
    /// for a timed run); the run stops early when they are used up.
    #[arg(long, env = "TESSERA_BENCH_TOKENS")]
    pub tokens: Option<u64>,
    /// certify: address of the identity service (`http://127.0.0.1:8080`).
    #[arg(long, env = "TESSERA_BENCH_IDENTITY_ADDR")]
    pub identity_addr: Option<String>,
    /// certify: trust domain of the identities requested.
    #[arg(long, env = "TESSERA_BENCH_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Worker threads of the load generator (default: one per CPU).
    #[arg(long, env = "TESSERA_BENCH_CLIENT_THREADS")]
    pub client_threads: Option<usize>,
    /// list-sa, watch-fanout: read lists and watch events as Kubernetes protobuf
    /// (`application/vnd.kubernetes.protobuf`, client-go's default) instead of JSON.
    #[arg(long, env = "TESSERA_BENCH_PROTOBUF")]
    pub protobuf: bool,
    /// Keep the namespace and its objects afterwards (e.g. `create-sa --keep` populates a store).
    #[arg(long, env = "TESSERA_BENCH_KEEP")]
    pub keep: bool,
    /// Do not draw the progress bar.
    #[arg(long, env = "TESSERA_BENCH_NO_PROGRESS")]
    pub no_progress: bool,
}

/// How `tessera bench` prints the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// Pretty-printed JSON (the `Summary` fields).
    Json,
}

// === impl BenchArgs ===

impl BenchArgs {
    /// The run these arguments describe.
    pub fn config(&self) -> BenchConfig {
        let limit = match (self.requests, self.duration) {
            (Some(n), _) => Limit::Requests(n),
            (None, Some(d)) => Limit::Duration(d),
            (None, None) => Limit::Duration(Duration::from_secs(10)),
        };
        BenchConfig {
            scenario: self.scenario.clone(),
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            concurrency: self.concurrency,
            limit,
            warmup: self.warmup,
            rate: self.rate,
            options: ScenarioOptions {
                objects: self.objects,
                watchers: self.watchers,
                tokens: self.tokens,
                keep: self.keep,
                protobuf: self.protobuf,
                identity_addr: self.identity_addr.clone(),
                trust_domain: self.trust_domain.clone(),
                ..ScenarioOptions::default()
            },
            progress: !self.no_progress,
            client_threads: self.client_threads,
        }
    }

    /// Runs the benchmark until done or `shutdown`, and renders the summary
    /// in the chosen [`OutputFormat`] (what `tessera bench` prints).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<String> {
        let summary = crate::run(self.config(), shutdown).await?;
        match self.output {
            OutputFormat::Table => Ok(summary.to_table()),
            OutputFormat::Json => summary.to_json().map(|json| json + "\n"),
        }
    }
}

fn scenario_names() -> PossibleValuesParser {
    PossibleValuesParser::new(crate::scenarios().iter().map(|s| clap::builder::PossibleValue::new(s.name).help(s.about)))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn defaults() {
        let args = parse(&["tokenreview", "--kubeconfig", "k"]).unwrap();
        let config = args.config();
        assert_eq!(config.concurrency, 8);
        assert_eq!(config.limit, Limit::Duration(Duration::from_secs(10)));
        assert_eq!(config.warmup, Duration::from_secs(1));
        assert_eq!(config.rate, None);
        assert_eq!(config.options, ScenarioOptions::default());
        assert_eq!(args.output, OutputFormat::Table);
        config.validate().unwrap();
    }

    #[test]
    fn every_flag() {
        let args = parse(&[
            "list-sa", "--kubeconfig", "k", "--context", "kind", "--concurrency", "3", "--requests", "300", "--warmup", "250ms",
            "--rate", "1000", "--output", "json", "--objects", "5", "--watchers", "2", "--tokens", "9", "--client-threads", "1",
            "--no-progress", "--protobuf",
        ])
        .unwrap();
        let config = args.config();
        assert_eq!(config.scenario, "list-sa");
        assert_eq!(config.context.as_deref(), Some("kind"));
        assert_eq!((config.concurrency, config.limit), (3, Limit::Requests(300)));
        assert_eq!(config.warmup, Duration::from_millis(250));
        assert_eq!(config.rate, Some(1000.0));
        assert_eq!((config.options.objects, config.options.watchers, config.options.tokens), (5, 2, Some(9)));
        assert_eq!((config.client_threads, config.progress, config.options.protobuf), (Some(1), false, true));
        assert_eq!(args.output, OutputFormat::Json);
        let timed = parse(&["sar", "--kubeconfig", "k", "--duration", "1m"]).unwrap();
        assert_eq!(timed.config().limit, Limit::Duration(Duration::from_secs(60)));
    }

    #[test]
    fn rejects_unknown_scenarios_and_conflicting_limits() {
        assert!(parse(&["nope", "--kubeconfig", "k"]).is_err());
        assert!(parse(&["sar", "--kubeconfig", "k", "--duration", "1s", "--requests", "5"]).is_err());
        assert!(parse(&["sar"]).is_err());
    }
}
