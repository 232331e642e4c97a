//! Linkerd's authorization policy for tessera: the `policy.linkerd.io` kinds
//! ([`resources`]) and their admission checks ([`validate`]).
//!
//! A leaf crate (serde, schemars, ipnet, thiserror): the API server, the
//! proxy and the CLI all depend on it; it depends on none of them.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod resources;
pub mod validate;
