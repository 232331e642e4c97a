//! `tessera proxy`: the sidecar that gives a workload its mesh identity.
//!
//! It holds an identity certificate obtained from `tessera identity` over
//! Linkerd's Certify protocol, terminates mutual TLS for inbound traffic
//! (setting `l5d-client-id` from the client certificate), originates mutual
//! TLS for outbound traffic to endpoints whose *expected* identity comes from
//! the control plane, and exports linkerd2-proxy's metric names.
//!
//! The one value every part shares is [`tls::Credentials`]: the current
//! certificate, key and trust anchors, already built into rustls server and
//! client configurations. It is published through a `tokio::sync::watch`
//! channel ([`tls::CredentialsRx`]); a renewal or trust-bundle reload swaps a
//! complete new value in, so a handshake in flight finishes with the
//! credentials it started with.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod tap;
pub mod tls;
