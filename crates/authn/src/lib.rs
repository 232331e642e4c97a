//! Authentication for tessera: turns the credentials on a request into a
//! [`UserInfo`]. This crate decides *who* is calling; [`UserInfo`] values are
//! only built by the authenticators here (and by tests).
//!
//! Implemented: x509 client certificates (CN = user, O = groups), anonymous,
//! ServiceAccount tokens (bound and legacy: [`token`]) with their signing keys
//! ([`keys`]). The JWT codec ([`jwt`]) and the verification rules are
//! `tessera-token`'s, shared with the `tessera-auth` middleware.
//!
//! Must not depend on: HTTP servers (axum, hyper), the store, the API registry.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod keys;
pub mod token;
pub mod x509;

/// The strict compact JWS codec (shared with the middleware).
pub use tessera_token::jws as jwt;

/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The user and group of requests without credentials.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of requests without credentials.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// Members may do everything (until RBAC lands: the only authorised group).
pub const MASTERS_GROUP: &str = "system:masters";

/// An authenticated user, in the shape of Kubernetes' `UserInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// e.g. `admin` or `system:serviceaccount:api:api`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Stable id (ServiceAccount uid), when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups, always including `system:authenticated` for authenticated users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes (credential id, pod name/uid).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The anonymous user.
    pub fn anonymous() -> Self {
        Self {
            username: ANONYMOUS_USER.to_owned(),
            groups: vec![UNAUTHENTICATED_GROUP.to_owned()],
            ..Self::default()
        }
    }

    /// Whether this is the anonymous user.
    pub fn is_anonymous(&self) -> bool {
        self.username == ANONYMOUS_USER
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
