//! The scenario registry. Each scenario is one module with a type implementing
//! [`Scenario`] and a `pub(crate) const INFO: ScenarioInfo`; adding one means
//! adding its file and one line to [`REGISTRY`] (and its `mod` line).

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use futures::{Stream, StreamExt as _};
use http::StatusCode;
use indicatif::ProgressBar;

use crate::client::{Api, Reply, snippet};
use crate::config::{Limit, ScenarioOptions};
use crate::error::{Error, Result};

mod certify;
mod create_sa;
mod get_sa;
mod https_ceiling;
mod lease_renew;
mod list_sa;
mod sar;
mod tokenrequest;
mod tokenreview;
mod tokenreview_bad_audience;
mod tokenreview_uncached;
mod watch_fanout;

/// Every scenario, in the order `--help` lists them.
static REGISTRY: &[ScenarioInfo] = &[
    tokenreview::INFO,
    tokenreview_uncached::INFO,
    tokenreview_bad_audience::INFO,
    tokenrequest::INFO,
    sar::INFO,
    create_sa::INFO,
    get_sa::INFO,
    list_sa::INFO,
    lease_renew::INFO,
    watch_fanout::INFO,
    certify::INFO,
    https_ceiling::INFO,
];

/// A registered scenario.
#[derive(Clone, Copy)]
pub struct ScenarioInfo {
    /// The name on the command line, e.g. `tokenreview`.
    pub name: &'static str,
    /// One line on what one request is.
    pub about: &'static str,
    /// A fresh, unprepared instance.
    pub(crate) new: fn() -> Box<dyn Scenario>,
}

/// Every registered scenario.
pub fn scenarios() -> &'static [ScenarioInfo] {
    REGISTRY
}

/// The scenario called `name`.
pub(crate) fn find(name: &str) -> Result<&'static ScenarioInfo> {
    REGISTRY.iter().find(|s| s.name == name).ok_or_else(|| Error::UnknownScenario {
        name: name.to_owned(),
        known: REGISTRY.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    })
}

/// One kind of request to measure.
///
/// Lifecycle: `prepare` once (the namespace exists; create what requests need
/// and pre-serialise request bodies), then `request` from every worker
/// concurrently, warm-up first, then `cleanup` once (also after a failed
/// `prepare`). The runner deletes the namespace afterwards, so only what lives
/// outside it (tasks, cluster-scoped objects) needs `cleanup`.
#[async_trait]
pub(crate) trait Scenario: Send + Sync {
    /// Creates what the requests need.
    async fn prepare(&mut self, setup: &Setup<'_>) -> Result<()>;

    /// Sends one request and judges the answer. Must not panic on any answer.
    async fn request(&self, api: &Api, ticket: Ticket) -> Outcome;

    /// Releases what `prepare` made outside the namespace.
    async fn cleanup(&self, _api: &Api) -> Result<()> {
        Ok(())
    }
}

/// What `prepare` gets.
pub(crate) struct Setup<'a> {
    /// The run's namespace (already created).
    pub(crate) namespace: &'a str,
    /// The workers' clients: spread preparation load over them.
    pub(crate) apis: &'a [Api],
    /// Builds extra clients (watchers).
    pub(crate) connector: &'a crate::client::Connector,
    /// Scenario knobs.
    pub(crate) options: &'a ScenarioOptions,
    /// The measured phase's limit (to size pre-generated inputs).
    pub(crate) limit: Limit,
    /// Progress display: scenarios set its message during long preparations.
    pub(crate) progress: &'a ProgressBar,
}

/// The ServiceAccount the token and review scenarios act as.
pub(crate) const BENCH_ACCOUNT: &str = "bench";

// === impl Setup ===

impl Setup<'_> {
    /// A client for preparation steps.
    pub(crate) fn api(&self) -> &Api {
        // Invariant: the runner makes one client per worker and at least one worker.
        &self.apis[0]
    }

    /// Creates the [`BENCH_ACCOUNT`] ServiceAccount (already there is fine).
    pub(crate) async fn bench_account(&self) -> Result<()> {
        match self.api().create_service_account(self.namespace, BENCH_ACCOUNT).await {
            Err(Error::Status { status: 409, .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the [`BENCH_ACCOUNT`] and mints one token for it.
    pub(crate) async fn token_for_bench_account(&self) -> Result<String> {
        self.bench_account().await?;
        self.api().request_token(self.namespace, BENCH_ACCOUNT, crate::client::AUDIENCE).await
    }

    /// Runs `step(api, i)` for `i` in `0..n`, in order, spread over the
    /// workers' clients with two in flight per client, showing progress.
    pub(crate) fn spread<'s, T, F, Fut>(&'s self, what: &'s str, n: u64, step: F) -> impl Stream<Item = Result<T>> + 's
    where
        F: Fn(Api, u64) -> Fut + 's,
        Fut: Future<Output = Result<T>> + 's,
        T: 's,
    {
        let clients = self.apis.len().max(1);
        futures::stream::iter(0..n)
            .map(move |i| {
                if i % 128 == 0 {
                    self.progress.set_message(format!("{what}: {i}/{n}"));
                }
                let index = usize::try_from(i % clients as u64).unwrap_or(0);
                step(self.api_at(index).clone(), i)
            })
            .buffered(clients * 2)
    }

    fn api_at(&self, index: usize) -> &Api {
        self.apis.get(index).unwrap_or_else(|| self.api())
    }
}

/// Which request this is, so scenarios can use distinct inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// Warm-up or measured.
    pub(crate) phase: Phase,
    /// 0, 1, 2, … within the phase, across all workers.
    pub(crate) seq: u64,
}

/// A run's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not measured.
    Warmup,
    /// Measured.
    Measure,
}

/// How one request went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The expected answer.
    Ok,
    /// Anything else.
    Failed {
        /// Why, as counted in the summary.
        cause: Cause,
        /// A human-readable detail (the start of the body, the error).
        detail: String,
    },
}

/// Why a request failed (the keys of the summary's `errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// An unexpected HTTP status.
    Status(u16),
    /// The expected status with a body that does not say what it should.
    UnexpectedBody(u16),
    /// The connection failed or the answer was cut.
    Transport,
    /// The expected effect (a watch event) did not come in time.
    Timeout,
    /// The scenario's pre-generated inputs ran out: not counted, the run stops.
    Exhausted,
}

// === impl Ticket ===

impl Ticket {
    /// A name unique within the run, e.g. `m-42` (measured) or `w-7` (warm-up).
    pub(crate) fn name(&self, prefix: &str) -> String {
        let phase = match self.phase {
            Phase::Warmup => 'w',
            Phase::Measure => 'm',
        };
        format!("{prefix}-{phase}-{}", self.seq)
    }
}

// === impl Outcome ===

impl Outcome {
    pub(crate) fn failed(cause: Cause, detail: impl Into<String>) -> Self {
        Self::Failed { cause, detail: detail.into() }
    }

    /// `Ok` when the status is `want` and the body contains `needle` (if any).
    pub(crate) fn judge(reply: &Reply, want: StatusCode, needle: Option<&[u8]>) -> Self {
        if reply.status != want {
            return Self::failed(Cause::Status(reply.status.as_u16()), snippet(&reply.body));
        }
        match needle {
            Some(needle) if !crate::client::contains(&reply.body, needle) => Self::failed(
                Cause::UnexpectedBody(reply.status.as_u16()),
                format!("no {} in: {}", String::from_utf8_lossy(needle), snippet(&reply.body)),
            ),
            _ => Self::Ok,
        }
    }

    /// [`judge`](Self::judge) of a send that may have failed in transport.
    pub(crate) fn of(result: Result<Reply, kube::Error>, want: StatusCode, needle: Option<&[u8]>) -> Self {
        match result {
            Ok(reply) => Self::judge(&reply, want, needle),
            Err(e) => Self::failed(Cause::Transport, e.to_string()),
        }
    }
}

// === impl Cause ===

impl Cause {
    /// The summary key.
    pub(crate) fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(code) => write!(f, "{code}"),
            Self::UnexpectedBody(code) => write!(f, "unexpected-body ({code})"),
            Self::Transport => f.write_str("transport"),
            Self::Timeout => f.write_str("timeout"),
            Self::Exhausted => f.write_str("exhausted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_found() {
        let mut names: Vec<_> = scenarios().iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), scenarios().len());
        for name in names {
            assert_eq!(find(name).unwrap().name, name);
        }
        let err = find("nope").map(|s| s.name).unwrap_err().to_string();
        assert!(err.starts_with("unknown scenario \"nope\" (known: tokenreview, "), "{err}");
    }

    #[test]
    fn judging_answers() {
        let reply = |status: u16, body: &str| Reply {
            status: StatusCode::from_u16(status).unwrap(),
            body: bytes::Bytes::from(body.to_owned()),
        };
        let yes: &[u8] = br#""allowed":true"#;
        assert_eq!(Outcome::judge(&reply(201, r#"{"status":{"allowed":true}}"#), StatusCode::CREATED, Some(yes)), Outcome::Ok);
        assert_eq!(Outcome::judge(&reply(200, "{}"), StatusCode::OK, None), Outcome::Ok);
        let Outcome::Failed { cause, detail } = Outcome::judge(&reply(404, "404 page not found"), StatusCode::CREATED, Some(yes)) else {
            panic!("404 accepted")
        };
        assert_eq!((cause.key(), detail.as_str()), ("404".to_owned(), "404 page not found"));
        let Outcome::Failed { cause, .. } = Outcome::judge(&reply(201, r#"{"status":{"allowed":false}}"#), StatusCode::CREATED, Some(yes)) else {
            panic!("denial accepted")
        };
        assert_eq!(cause.key(), "unexpected-body (201)");
    }

    #[test]
    fn ticket_names_are_distinct_per_phase() {
        let m = Ticket { phase: Phase::Measure, seq: 3 };
        let w = Ticket { phase: Phase::Warmup, seq: 3 };
        assert_eq!(m.name("bench"), "bench-m-3");
        assert_ne!(m.name("bench"), w.name("bench"));
    }
}
