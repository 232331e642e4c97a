//! The node agent: kubelet's token part, run as a node. It joins the cluster
//! as `system:node:NAME` with a bootstrap token ([`node`]), registers its
//! Node and heartbeats through a Lease ([`heartbeat`]), registers the Pods it runs,
//! and projects what the Pod the server returns says ([`volumes`]): each
//! `serviceAccountToken` source as a Pod-bound token from TokenRequest with
//! its audience and expiry, `ca.crt` from `kube-root-ca.crt`, `namespace`
//! from the downward API, at the mount paths below the pod's root, with
//! atomic replacement below a root only its user can write (never following a
//! symbolic link there). It refreshes tokens at 80 % of their lifetime (or after 24 h),
//! reports pod status as kubelet does ([`status`]), and
//! deletes the Pod when the workload stops, which revokes its tokens. A
//! workload it starts gets a container's environment, not the agent's: no
//! kubeconfig or other credential of the agent's reaches it.
//!
//! Entry points: [`Agent`] (library), [`cli`] (`tessera agent`).
//!
//! Must not depend on: tessera-store, tessera-apiserver (it talks to any
//! Kubernetes API through a kubeconfig).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
pub mod environment;
mod files;
pub mod heartbeat;
pub mod mesh;
pub mod node;
pub mod orphan;
mod pod;
mod projector;
pub mod status;
pub mod trust;
pub mod volumes;

pub use files::{FilesError, OutputRoot};
pub use pod::{InvalidPodSpec, PROXY_CONTAINER, PodSpec, ProjectedToken, ProxyContainer, RegisteredPod, SERVICE_ACCOUNT_FILES, TOKENS_MOUNT_PATH};
pub use projector::{Agent, AgentError, Layout, TokenSlot};
