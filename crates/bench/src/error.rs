//! Errors of a benchmark run. Per-request failures are not errors: they are
//! counted in the [`Summary`](crate::Summary). These are the failures that stop
//! a run: a bad configuration, an unreachable server, a failed preparation.

use std::path::PathBuf;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a benchmark run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent (e.g. zero concurrency, a negative rate).
    #[error("invalid benchmark configuration: {0}")]
    Config(String),
    /// The scenario name is not in the registry.
    #[error("unknown scenario {name:?} (known: {known})")]
    UnknownScenario {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// The kubeconfig could not be read or does not describe a usable cluster.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What kube reported.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// kube could not build a client from the kubeconfig (TLS material, proxy, auth).
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// A preparation or cleanup request did not reach the server or its answer was cut.
    #[error("{what}: {source}")]
    Transport {
        /// The step, e.g. `creating namespace tessera-bench-1a2b3c4d`.
        what: String,
        /// What kube reported.
        #[source]
        source: kube::Error,
    },
    /// A preparation or cleanup request got an unexpected HTTP status.
    #[error("{what}: the server answered {status}: {body}")]
    Status {
        /// The step.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// A preparation response had the right status but not the expected content.
    #[error("{what}: unexpected response: {detail}")]
    Response {
        /// The step.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The dedicated client runtime could not be started.
    #[error("starting the benchmark runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The dedicated client runtime stopped without a result (a worker panicked).
    #[error("the benchmark runtime stopped before the run finished")]
    RuntimeGone,
    /// The run was interrupted (Ctrl-C) before the measurement started.
    #[error("interrupted before the measurement started")]
    Interrupted,
    /// A worker task panicked (a bug in a scenario).
    #[error("a benchmark worker failed: {0}")]
    Worker(String),
    /// The summary could not be rendered as JSON.
    #[error("rendering the summary as JSON: {0}")]
    Render(#[source] serde_json::Error),
}
