//! The node agent: kubelet's token part, run as a node. It joins the cluster
//! as `system:node:NAME` with a bootstrap token ([`node`]), registers its
//! Node and heartbeats through a Lease ([`heartbeat`]), registers the Pods it runs,
//! requests Pod-bound ServiceAccount tokens through TokenRequest, writes them
//! (with `ca.crt` and `namespace`) into a directory per Pod with atomic
//! replacement, refreshes them at 80 % of their lifetime (or after 24 h), and
//! deletes the Pod when the workload stops, which revokes its tokens.
//!
//! Entry points: [`Agent`] (library), [`cli`] (`tessera agent`).
//!
//! Must not depend on: tessera-store, tessera-apiserver (it talks to any
//! Kubernetes API through a kubeconfig).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
mod files;
pub mod heartbeat;
pub mod node;
mod pod;
mod projector;

pub use files::write_atomically;
pub use pod::{PodSpec, ProjectedToken, RegisteredPod};
pub use projector::{Agent, AgentError, Layout};
