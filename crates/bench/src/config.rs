//! The typed configuration of a run. Built by the CLI (see `BenchArgs`) or by
//! any other caller; checked once by [`BenchConfig::validate`].

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Everything a benchmark run needs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Scenario name, one of [`scenarios`](crate::scenarios).
    pub scenario: String,
    /// kubeconfig of the API server to measure.
    pub kubeconfig: PathBuf,
    /// Context in the kubeconfig; `None` uses its current-context.
    pub context: Option<String>,
    /// Concurrent workers, each with its own client and connection.
    pub concurrency: usize,
    /// When the measurement ends.
    pub limit: Limit,
    /// Unmeasured warm-up before the measurement (0 for none).
    pub warmup: Duration,
    /// Open loop at this many requests per second; `None` for closed loop.
    pub rate: Option<f64>,
    /// Knobs some scenarios read.
    pub options: ScenarioOptions,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Worker threads of the client runtime; `None` for one per CPU.
    pub client_threads: Option<usize>,
}

/// When the measured phase ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this many requests (successful or not).
    Requests(u64),
    /// After this long; requests in flight then still complete and count.
    Duration(Duration),
}

/// Scenario-specific knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioOptions {
    /// `list-sa`, `get-sa`: ServiceAccounts created before measuring; `lease-renew`:
    /// Leases, one per holder.
    pub objects: usize,
    /// `watch-fanout`: concurrent watchers that must each receive every event.
    pub watchers: usize,
    /// `tokenreview-uncached`: tokens minted during preparation; `None` for the
    /// request count (`Limit::Requests`) or 20,000 (`Limit::Duration`). The run
    /// stops early, and says so, when they run out.
    pub tokens: Option<u64>,
    /// How long `watch-fanout` waits for every watcher to see an event.
    pub event_timeout: Duration,
    /// Keep the run's namespace and what the scenario created in it (to
    /// populate a store for scaling measurements).
    pub keep: bool,
    /// `certify`: the identity service (`http://host:port`, gRPC over h2c).
    pub identity_addr: Option<String>,
    /// `certify`: the identity's trust domain (`cluster.local`).
    pub trust_domain: String,
    /// `list-sa`, `watch-fanout`: ask for `application/vnd.kubernetes.protobuf`
    /// (as client-go does) instead of JSON.
    pub protobuf: bool,
}

// === impl BenchConfig ===

impl BenchConfig {
    /// A closed-loop run of `scenario` with the defaults of `tessera bench`
    /// (8 workers, 10 s measured after a 1 s warm-up).
    pub fn new(scenario: impl Into<String>, kubeconfig: impl Into<PathBuf>) -> Self {
        Self {
            scenario: scenario.into(),
            kubeconfig: kubeconfig.into(),
            context: None,
            concurrency: 8,
            limit: Limit::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(1),
            rate: None,
            options: ScenarioOptions::default(),
            progress: true,
            client_threads: None,
        }
    }

    /// Checks the values that types cannot.
    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        match self.limit {
            Limit::Requests(0) => return Err(Error::Config("requests must be at least 1".into())),
            Limit::Duration(d) if d.is_zero() => return Err(Error::Config("duration must be longer than 0".into())),
            _ => {}
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(Error::Config(format!("rate must be a positive number of requests per second, not {rate}")));
        }
        if self.client_threads == Some(0) {
            return Err(Error::Config("client threads must be at least 1".into()));
        }
        if self.options.watchers == 0 {
            return Err(Error::Config("watchers must be at least 1".into()));
        }
        if self.options.tokens == Some(0) {
            return Err(Error::Config("tokens must be at least 1".into()));
        }
        crate::scenarios::find(&self.scenario)?;
        Ok(())
    }
}

// === impl ScenarioOptions ===

impl Default for ScenarioOptions {
    fn default() -> Self {
        Self {
            objects: 100,
            watchers: 10,
            tokens: None,
            event_timeout: Duration::from_secs(10),
            keep: false,
            identity_addr: None,
            trust_domain: "cluster.local".to_owned(),
            protobuf: false,
        }
    }
}

impl ScenarioOptions {
    /// How many tokens `tokenreview-uncached` mints for a run limited by `limit`.
    pub(crate) fn token_pool(&self, limit: Limit) -> u64 {
        self.tokens.unwrap_or(match limit {
            Limit::Requests(n) => n,
            Limit::Duration(_) => 20_000,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        BenchConfig::new("tokenreview", "/dev/null").validate().unwrap();
    }

    #[test]
    fn rejects_nonsense() {
        let base = BenchConfig::new("tokenreview", "/dev/null");
        let bad = [
            BenchConfig { concurrency: 0, ..base.clone() },
            BenchConfig { limit: Limit::Requests(0), ..base.clone() },
            BenchConfig { limit: Limit::Duration(Duration::ZERO), ..base.clone() },
            BenchConfig { rate: Some(0.0), ..base.clone() },
            BenchConfig { rate: Some(f64::NAN), ..base.clone() },
            BenchConfig { scenario: "nope".into(), ..base.clone() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn token_pool_follows_the_limit() {
        let options = ScenarioOptions::default();
        assert_eq!(options.token_pool(Limit::Requests(300)), 300);
        assert_eq!(options.token_pool(Limit::Duration(Duration::from_secs(5))), 20_000);
        let options = ScenarioOptions { tokens: Some(7), ..options };
        assert_eq!(options.token_pool(Limit::Requests(300)), 7);
    }
}
