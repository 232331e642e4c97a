//! The tessera resource registry: which kinds exist ([`resource`]), how a
//! request body becomes a valid object ([`decode`], [`kinds`], [`validation`]),
//! how objects are stored, listed, patched and watched ([`registry::Registry`]),
//! how a delete is planned (finalizers, propagation policy: [`deletion`]),
//! and the Kubernetes `Status` errors all of that can fail with ([`status`]).
//!
//! Objects are handled as JSON values normalised through the typed
//! `k8s-openapi` structs, so every field keeps its exact wire form.
//!
//! Must not depend on: HTTP (axum, hyper), authentication or authorization crates.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod apply;
pub mod decode;
pub mod deletion;
pub mod endpointslice;
pub mod kinds;
pub mod openapi_ext;
pub mod patch;
pub mod policy;
pub mod protobuf;
pub mod registry;
pub mod resource;
pub mod selector;
pub mod service;
pub mod service_ips;
pub mod status;
pub mod validation;

pub use registry::Registry;
pub use resource::ResourceInfo;
pub use status::{ApiError, Result};
