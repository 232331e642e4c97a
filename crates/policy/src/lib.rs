//! Linkerd's authorization policy for tessera: the `policy.linkerd.io` kinds
//! ([`resources`]) and their admission checks ([`validate`]), the per-pod
//! inbound policy the server compiles from them ([`compiled`], [`compile`]),
//! and the one evaluation both the proxy and `tessera policy explain` run
//! ([`evaluate`]), and who a pod's port lets in ([`reach`]).
//!
//! A leaf crate (serde, schemars, ipnet, thiserror, http, regex): the API
//! server, the proxy and the CLI all depend on it; it depends on none of them.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod compile;
pub mod compiled;
pub mod evaluate;
pub mod reach;
pub mod resources;
pub mod validate;

pub use compiled::*;
pub use evaluate::{Client, Decision, HttpRequestInfo, Verdict};
