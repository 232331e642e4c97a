//! Authorization for tessera: RBAC as kube-apiserver evaluates it.
//!
//! [`policy::Policy`] indexes Roles, ClusterRoles and bindings by subject;
//! [`authorizer::authorize`] returns a [`authorizer::Decision`] whose allow
//! variant carries the exact `RBAC: allowed by …` reason and can only be built
//! here. [`escalation::check`] is the escalation check, bounded in cost; [`authorizer::explain`]
//! and [`authorizer::who_can`] answer the questions kubectl cannot.
//! [`bootstrap`] holds the default policy.
//!
//! Must not depend on: HTTP, the store, the API registry (objects arrive as JSON).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod authorizer;
pub mod bootstrap;
pub mod escalation;
pub mod policy;
pub mod rule;

pub use authorizer::{Allowed, Decision, authorize};
pub use policy::Policy;
pub use rule::{PolicyRule, Request};

#[cfg(test)]
mod tests;
