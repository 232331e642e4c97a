//! Encryption at rest, as kube-apiserver does it: an `EncryptionConfiguration`
//! file (`apiserver.config.k8s.io/v1`) names, per resource, an ordered list of
//! providers. New writes use the first provider's first key; reads use
//! whichever provider and key the stored value's prefix names
//! (`k8s:enc:aesgcm:v1:KEYNAME:`, `k8s:enc:secretbox:v1:KEYNAME:`), or
//! `identity` for plain values. Rotation is therefore: add a new key first,
//! restart, rewrite every object, drop the old key.
//!
//! [`EncryptedStore`] applies the configuration under any [`tessera_store::Store`],
//! so everything above the store (registry, watch caches) sees plain values
//! and nothing below it (SQLite file, etcd, backups) does.
//!
//! Must not depend on: HTTP, the API registry.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod provider;
mod store;

pub use config::{ConfigError, EncryptionConfig};
pub use provider::TransformError;
pub use store::{EncryptedStore, RewriteReport};
