//! Reviewing a token: the [`Reviewer`] trait and its TokenReview implementation.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use serde::{Deserialize, Serialize};

/// Who is calling, as the TokenReview API reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// e.g. `system:serviceaccount:api:api`.
    pub username: String,
    /// The ServiceAccount uid.
    #[serde(default)]
    pub uid: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes (credential id, pod name and uid).
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The answer about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Valid for the audience.
    Authenticated(UserInfo),
    /// Not valid; the reviewer's reason (for logs, never sent to the caller).
    Rejected(String),
}

/// The review could not be made at all (as opposed to a token being refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API refused the review itself, e.g. 403 because the service's
    /// ServiceAccount may not create tokenreviews.
    #[error("the TokenReview API refused the review ({code}): {message}")]
    Refused {
        /// HTTP status.
        code: u16,
        /// The API's message.
        message: String,
    },
    /// The API could not be reached or answered nonsense.
    #[error("the TokenReview API is unavailable: {0}")]
    Unavailable(String),
}

/// Something that reviews tokens for an audience.
pub trait Reviewer: Send + Sync + 'static {
    /// Reviews `token` for `audience`.
    fn review<'a>(&'a self, token: &'a str, audience: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>>;
}

/// A shared reviewer (so that a service can keep a handle on, say, its cache).
impl<R: Reviewer> Reviewer for std::sync::Arc<R> {
    fn review<'a>(&'a self, token: &'a str, audience: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
        (**self).review(token, audience)
    }
}

/// Reviews with the TokenReview API (tessera or any Kubernetes cluster).
#[derive(Clone)]
pub struct TokenReviewClient {
    client: kube::Client,
}

impl TokenReviewClient {
    /// A reviewer over a kube client (its credentials need `create tokenreviews`,
    /// e.g. a binding to `system:auth-delegator`).
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Reviewer for TokenReviewClient {
    fn review<'a>(&'a self, token: &'a str, audience: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
        Box::pin(async move {
            let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(vec![audience.to_owned()]) },
                ..TokenReview::default()
            };
            let answer = api.create(&kube::api::PostParams::default(), &review).await.map_err(|e| match e {
                kube::Error::Api(status) => ReviewError::Refused { code: status.code, message: status.message },
                other => ReviewError::Unavailable(other.to_string()),
            })?;
            let status = answer.status.unwrap_or_default();
            // The API must confirm the audience asked for (a server that ignores
            // spec.audiences would otherwise accept tokens meant for others).
            let audience_confirmed = status.audiences.as_ref().is_none_or(|a| a.iter().any(|x| x == audience));
            if status.authenticated == Some(true) && audience_confirmed {
                let user = status.user.unwrap_or_default();
                return Ok(ReviewOutcome::Authenticated(UserInfo {
                    username: user.username.unwrap_or_default(),
                    uid: user.uid.unwrap_or_default(),
                    groups: user.groups.unwrap_or_default(),
                    extra: user.extra.unwrap_or_default().into_iter().collect(),
                }));
            }
            Ok(ReviewOutcome::Rejected(status.error.unwrap_or_else(|| "not authenticated".to_owned())))
        })
    }
}
