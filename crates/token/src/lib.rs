//! ServiceAccount tokens as both sides of tessera see them: the server that
//! issues and reviews them (`tessera-authn`) and the middleware that verifies
//! them offline (`tessera-auth`). Everything about a token that does not need
//! the API's object state lives here once, so the two cannot apply different
//! rules:
//!
//! - [`jws`]: the strict, size-bounded compact JWS codec;
//! - [`key`]: public keys and their JWK/JWKS form;
//! - [`verify`]: the verifier (signature, issuer, audiences, times, claims),
//!   with kube-apiserver's error strings;
//! - [`cache`]: the review cache, keyed by SHA-256 and bounded in bytes.
//!
//! Must not depend on: HTTP, async runtimes, the store, key generation or any
//! other server-only weight (the middleware links this crate into services).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cache;
pub mod jws;
pub mod key;
pub mod verify;

#[cfg(any(test, feature = "test-support"))]
pub mod attacks;
