//! Authenticate service-to-service calls with Kubernetes ServiceAccount tokens,
//! the pattern of "Authentication between microservices using Kubernetes
//! identities": the caller sends its projected, audience-bound token; the
//! callee reviews it for *its own* audience and learns who is calling.
//!
//! Server side: [`AuthLayer`] is a tower layer (axum, hyper, tonic) that takes
//! the token from `X-Client-Id` or `Authorization: Bearer`, reviews it with a
//! [`Reviewer`] — usually [`TokenReviewClient`] (the TokenReview API, against
//! tessera or any Kubernetes cluster) behind a [`CachedReviewer`] — and puts the
//! caller's [`UserInfo`] into the request extensions. Answers:
//! `401 X-Client-Id not supplied`, `403 Invalid token`, and `503` when the
//! review itself cannot be made (for example when the service's own
//! ServiceAccount lacks `system:auth-delegator`). [`JwksReviewer`] verifies
//! offline from the issuer's JWKS instead, with the server's own verification
//! rules (`tessera-token`), falling back to TokenReview for tokens of other
//! issuers (trade-off: no revocation before expiry).
//!
//! Revocation window: in TokenReview mode an accepted token is reused for
//! [`CachedReviewer`]'s revocation window (5 s by default, set with
//! [`CachedReviewer::with_revocation_window`]), so a token whose Pod or
//! ServiceAccount is deleted is refused at most that long afterwards. In JWKS
//! mode a token is accepted until it expires.
//!
//! Client side: [`TokenFile`] keeps the current token of a projected token file
//! that the node agent (or kubelet) rotates, re-reading it when it changes.
//!
//! ```no_run
//! use std::time::Duration;
//! use tessera_auth::{AuthLayer, CachedReviewer, TokenReviewClient, UserInfo};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! // Accepted tokens are trusted for at most 5 s before the API is asked again.
//! let reviewer = CachedReviewer::new(TokenReviewClient::new(client)).with_revocation_window(Duration::from_secs(5));
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|user: axum::Extension<UserInfo>| async move { format!("hello {}", user.username) }))
//!     .layer(AuthLayer::new(reviewer, "data-store"));
//! # let _ = app; Ok(()) }
//! ```
//!
//! Must not depend on: any tessera server crate (this library is for services).

#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cache;
mod jwks;
mod layer;
mod review;
mod token_file;

pub use cache::{CachedReviewer, DEFAULT_MAX_BYTES, DEFAULT_NEGATIVE_TTL, DEFAULT_REVOCATION_WINDOW};
pub use jwks::{DEFAULT_UNKNOWN_KID_TTL, JwksReviewer, JwksSource, MIN_FETCH_INTERVAL};
pub use layer::{AuthLayer, AuthService, Credential, CredentialError, MAX_TOKEN_BYTES, credential};
pub use review::{ReviewError, ReviewOutcome, Reviewer, TokenReviewClient, UserInfo};
pub use token_file::{TokenFile, TokenFileError};
