//! Linkerd's authorization policy (`policy.linkerd.io`) for tessera: the typed
//! resources, the per-pod inbound policy the server compiles from them, and
//! the one evaluation both the proxy and `tessera policy explain` run.

pub mod compiled;
pub mod evaluate;

pub use compiled::*;
pub use evaluate::{Client, Decision, HttpRequestInfo, Verdict};
