//! Token authentication: a [`TokenReviewer`] asks Kubernetes (or a fake in
//! tests) whether a ServiceAccount token is valid for the audience
//! [`IDENTITY_AUDIENCE`]; [`authenticate`] turns its answer into an
//! [`Authenticated`] proof whose identity matched the validated CSR.

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::csr::ValidatedCsr;
use crate::error::{CertifyError, ReviewError};

/// The audience proxies request their tokens for (`kubectl create token … --audience identity.l5d.io`).
pub const IDENTITY_AUDIENCE: &str = "identity.l5d.io";

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The answer of a token review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// The token is valid for the requested audiences.
    Authenticated {
        /// e.g. `system:serviceaccount:emojivoto:web`.
        username: String,
        /// The audiences the reviewer confirmed (may be empty when it does not say).
        audiences: Vec<String>,
    },
    /// The token is not valid (expired, wrong audience, unknown key, deleted owner…).
    Rejected {
        /// The reviewer's explanation (`status.error`), possibly empty.
        error: String,
    },
}

/// Reviews bearer tokens. The real implementation is [`KubeTokenReviewer`];
/// tests plug in a fake.
#[async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    /// Reviews `token` for `audiences`. `Err` means no answer could be had
    /// (the API is unreachable), not that the token is bad.
    async fn review(&self, token: &str, audiences: &[String]) -> Result<Review, ReviewError>;
}

/// A [`TokenReviewer`] that POSTs `authentication.k8s.io/v1` TokenReviews to a
/// Kubernetes API (`tessera server` or any real cluster). The client's
/// credentials need `create tokenreviews` (ClusterRole `system:auth-delegator`).
#[derive(Clone)]
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
}

impl KubeTokenReviewer {
    /// A reviewer over a kube client.
    pub fn new(client: kube::Client) -> Self {
        Self { api: Api::all(client) }
    }
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer").finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str, audiences: &[String]) -> Result<Review, ReviewError> {
        let request = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(audiences.to_vec()) },
            ..TokenReview::default()
        };
        let answer = self.api.create(&PostParams::default(), &request).await?;
        let status = answer.status.ok_or_else(|| ReviewError::Malformed("no status".to_owned()))?;
        if status.authenticated == Some(true) {
            let username = status.user.and_then(|u| u.username).unwrap_or_default();
            Ok(Review::Authenticated { username, audiences: status.audiences.unwrap_or_default() })
        } else {
            Ok(Review::Rejected { error: status.error.unwrap_or_default() })
        }
    }
}

/// How ServiceAccounts map to identities:
/// `NAME.NS.serviceaccount.identity.<control namespace>.<trust domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityNaming {
    /// The control plane namespace (Linkerd: `linkerd`).
    pub control_namespace: String,
    /// The trust domain (`cluster.local`).
    pub trust_domain: String,
}

impl Default for IdentityNaming {
    fn default() -> Self {
        Self { control_namespace: "linkerd".to_owned(), trust_domain: "cluster.local".to_owned() }
    }
}

impl IdentityNaming {
    /// The identity of ServiceAccount `name` in `namespace`.
    pub fn identity_for(&self, namespace: &str, name: &str) -> String {
        format!("{name}.{namespace}.serviceaccount.identity.{}.{}", self.control_namespace, self.trust_domain)
    }

    /// The identity of a ServiceAccount username (`system:serviceaccount:NS:NAME`).
    pub fn identity_of_username(&self, username: &str) -> Option<String> {
        let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
        let (namespace, name) = rest.split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(self.identity_for(namespace, name))
    }
}

/// Proof that a token was reviewed as authentic for [`IDENTITY_AUDIENCE`] and
/// that its ServiceAccount's identity is the one a [`ValidatedCsr`] asked for.
/// Only [`authenticate`] builds one.
#[derive(Debug, Clone)]
pub struct Authenticated {
    identity: String,
    username: String,
}

impl Authenticated {
    /// The authenticated identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The reviewed username (`system:serviceaccount:NS:NAME`).
    pub fn username(&self) -> &str {
        &self.username
    }
}

/// Reviews `token` and checks that its ServiceAccount maps to `csr`'s identity.
pub async fn authenticate(
    reviewer: &dyn TokenReviewer,
    naming: &IdentityNaming,
    token: &[u8],
    csr: &ValidatedCsr,
) -> Result<Authenticated, CertifyError> {
    let token = std::str::from_utf8(token).map_err(|_| CertifyError::Unauthenticated { reason: "token is not valid UTF-8".to_owned() })?;
    let audiences = [IDENTITY_AUDIENCE.to_owned()];
    let (username, confirmed) = match reviewer.review(token.trim(), &audiences).await.map_err(CertifyError::ReviewUnavailable)? {
        Review::Authenticated { username, audiences } => (username, audiences),
        Review::Rejected { error } => return Err(CertifyError::Unauthenticated { reason: error }),
    };
    // Kubernetes answers with the intersection of the token's and the requested
    // audiences; a reviewer that names others has not vouched for ours.
    if !confirmed.is_empty() && !confirmed.iter().any(|a| a == IDENTITY_AUDIENCE) {
        return Err(CertifyError::Unauthenticated {
            reason: format!("token audiences {confirmed:?} do not include {IDENTITY_AUDIENCE:?}"),
        });
    }
    let found = naming.identity_of_username(&username).ok_or_else(|| CertifyError::NotServiceAccount { username: username.clone() })?;
    if found != csr.identity() {
        return Err(CertifyError::IdentityMismatch { requested: csr.identity().to_owned(), found });
    }
    Ok(Authenticated { identity: found, username })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_map_to_identities() {
        let naming = IdentityNaming::default();
        assert_eq!(
            naming.identity_of_username("system:serviceaccount:emojivoto:web").as_deref(),
            Some("web.emojivoto.serviceaccount.identity.linkerd.cluster.local")
        );
        for bad in
            ["admin", "system:serviceaccount:", "system:serviceaccount:ns", "system:serviceaccount::x", "system:serviceaccount:a:b:c"]
        {
            assert_eq!(naming.identity_of_username(bad), None, "{bad}");
        }
        let custom = IdentityNaming { control_namespace: "tessera".to_owned(), trust_domain: "example.org".to_owned() };
        assert_eq!(custom.identity_for("api", "api"), "api.api.serviceaccount.identity.tessera.example.org");
    }
}
