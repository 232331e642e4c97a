//! `tessera bench`: a load generator that measures any Kubernetes-compatible API
//! server (tessera or kube-apiserver) through a kubeconfig, so both sides are
//! measured the same way. The entry point is [`run`] with a typed
//! [`BenchConfig`]; it returns a [`Summary`] (throughput, HDR latency
//! percentiles, errors by status) that renders as a table or as JSON. The
//! `clap` feature adds [`BenchArgs`], the `tessera bench` subcommand.
//!
//! A run: read the kubeconfig, create a namespace `tessera-bench-<random>`, let
//! the scenario prepare what it needs there (ServiceAccounts, tokens, bindings,
//! watchers), warm up, measure, then delete the namespace (also after an error or
//! Ctrl-C). The client runs on its own multi-threaded tokio runtime, one
//! [`kube::Client`] per worker so `--concurrency N` really holds N HTTP/1.1
//! connections (kube's rustls connector offers HTTP/1.1 only, and a shared
//! client would funnel every request through one `tower::buffer` task). Each
//! client is kube's own stack (base URI, kubeconfig credentials, exec plugins)
//! over hyper's pool, without the retry layer (a 429 or 503 is an error to
//! count, not to hide) and the per-request tracing span, with TCP_NODELAY on as
//! in Go clients. Requests are raw `http::Request`s with pre-serialised bodies,
//! so the load generator spends its share of the CPU on the wire, not on typed
//! (de)serialisation.
//!
//! Closed loop (default): each worker sends its next request when the previous
//! one answered; latency is the request's own time. Open loop (`rate`): request
//! `i` is due at `start + i / rate`; latency counts from when it was due, so a
//! server that falls behind shows it in the percentiles (no coordinated
//! omission). Latency percentiles cover successful requests; failures are
//! counted by HTTP status (or `transport`, `timeout`, `unexpected-body`).
//!
//! # Adding a scenario
//!
//! One file: add `src/scenarios/<name>.rs` with a type implementing the
//! crate-private `Scenario` trait (`prepare` builds what the requests need in
//! the run's namespace and pre-serialises the request bodies; `request` sends
//! one request as a raw `http::Request` through the crate's lean client and returns
//! an `Outcome`; `cleanup` stops anything that lives outside the namespace) and a
//! `pub(crate) const INFO: ScenarioInfo`, then list it in `scenarios/mod.rs`.
//! `certify` (against `tessera identity`) and the sidecar proxy scenario are
//! meant to land this way once those components exist; a scenario that speaks
//! another protocol (Certify is gRPC) builds its own client in `prepare` and
//! uses the run's kube clients only to set up.
//!
//! Must not depend on: the server crates (apiserver, api, store, authn, rbac):
//! the bench only talks HTTP through kube, like any other client.

#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "clap")]
mod args;
mod client;
mod config;
mod error;
mod runner;
mod scenarios;
mod summary;

#[cfg(feature = "clap")]
pub use args::{BenchArgs, OutputFormat};
pub use config::{BenchConfig, Limit, ScenarioOptions};
pub use error::{Error, Result};
pub use runner::run;
pub use scenarios::{ScenarioInfo, scenarios};
pub use summary::{Latency, Summary};
