//! The etcd backend: [`EtcdStore`] keeps every key in an etcd v3 cluster (the
//! engine Kubernetes runs on), so several `tessera server` replicas can share
//! one store. Built with the cargo feature `etcd` (on by default; it needs
//! `protoc` at build time). [`EtcdConfig`] and [`connect`] exist in every build,
//! so callers need no `cfg`: without the feature [`connect`] fails with a clear
//! message.
//!
//! # Design
//!
//! The [`Store`] trait maps onto etcd one to one:
//!
//! - **Revisions are etcd's.** A key's `mod_revision` is its revision (and so
//!   the API's `resourceVersion`, as in Kubernetes); list, write and watch
//!   responses report the cluster revision from etcd's response header. etcd's
//!   revision starts at 1 on a new cluster and is shared by everything written
//!   to that cluster, so it grows by exactly one per write only while this
//!   store is the cluster's only writer.
//! - **Optimistic concurrency is a transaction.** `create` is a txn on
//!   `create_revision == 0`; `update`/`delete` compare `version > 0` and
//!   `mod_revision == expected`, and on failure read the key in the same txn to
//!   answer [`Error::NotFound`] or [`Error::Conflict`] with the current revision.
//! - **Watches replay history from etcd.** A watch after revision `r` starts
//!   etcd's watch at `r` itself (dropping events at `r`), so etcd refuses it
//!   exactly when `r` is older than the compacted revision; `prev_kv` fills in
//!   the last value of deleted keys; progress notifications are requested and
//!   skipped. [`Error::Compacted`] and [`Error::FutureRevision`] are detected at
//!   call time with a range read at `r`; a compaction racing with the start, a
//!   broken connection or a cancelled watch ends the stream with an error item,
//!   so its consumer re-lists (and its next watch goes to a live endpoint).
//! - **Key layout.** A store key `{root}{rest}` is kept in etcd at
//!   `{prefix}{rest}`. The API layer's keys start with `/registry`, which is the
//!   default root, and the default prefix is `/registry` too: tessera's objects
//!   sit at `/registry/{resource}/{namespace}/{name}`, exactly where Kubernetes
//!   keeps them. `--etcd-prefix /tenant-a` moves them to
//!   `/tenant-a/{resource}/…`, as kube-apiserver's flag of that name does. Keys
//!   outside the root are refused; list and watch prefixes that cover the whole
//!   root map to the whole etcd prefix.
//! - **Failures.** The client balances requests over all endpoints. Reads are
//!   retried with exponential back-off while the cluster is unavailable (no
//!   leader, connection refused, timeouts), within [`EtcdConfig::request_timeout`].
//!   Writes are retried only when etcd certainly did not apply them (no leader,
//!   no connection); an ambiguous failure is reported as [`Error::Backend`],
//!   never retried blindly, because a replayed create or update could report a
//!   conflict with itself. Requests carry etcd's require-leader flag so a
//!   member cut off from the quorum fails fast instead of serving stale data,
//!   and HTTP/2 keep-alives detect dead connections.
//! - **Leader election.** [`campaign`] holds a lease-bound key per election
//!   (see the `election` module) and reports it as a
//!   [`Leadership`].
//! - **Sizes.** etcd refuses requests larger than its `--max-request-bytes`
//!   (1.5 MiB by default), as it does for Kubernetes; responses of any size are
//!   accepted.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::leader::Leadership;
use crate::{Error, Result, Store};

#[cfg(feature = "etcd")]
mod client;
#[cfg(feature = "etcd")]
mod election;
#[cfg(feature = "etcd")]
pub use client::EtcdStore;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

#[cfg(all(test, feature = "etcd"))]
mod tests;

/// The key root the API layer uses (and the default etcd prefix).
pub const REGISTRY_ROOT: &str = "/registry";

/// How long one store operation may take, retries included, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The default TTL of a leader's lease: how long the other replicas wait
/// before taking over from a leader that died without resigning.
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(5);

/// Where the etcd cluster is and how store keys are laid out in it.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client endpoints, `host:port` or `http(s)://host:port`; requests are
    /// balanced over all of them.
    pub endpoints: Vec<String>,
    /// The store-side key root that [`prefix`](Self::prefix) replaces: a store
    /// key `{root}{rest}` lives at etcd key `{prefix}{rest}`. Default
    /// [`REGISTRY_ROOT`]; keys outside it are refused.
    pub root: String,
    /// The etcd key prefix tessera's keys live under. Default `/registry`
    /// (Kubernetes' layout); give each deployment sharing a cluster its own.
    pub prefix: String,
    /// TLS for the client connections (`https://` endpoints); `None` for
    /// plain `http://`.
    pub tls: Option<EtcdTls>,
    /// The longest one store operation may take, retries included.
    pub request_timeout: Duration,
    /// TTL of the lease a leader holds (whole seconds, at least 2).
    pub leader_lease: Duration,
}

impl EtcdConfig {
    /// The Kubernetes layout (`/registry/…` keys) on these endpoints, without TLS.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            root: REGISTRY_ROOT.to_owned(),
            prefix: REGISTRY_ROOT.to_owned(),
            tls: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            leader_lease: DEFAULT_LEADER_LEASE,
        }
    }

    /// Parses `etcd://host:port[,host:port…]` (the `--storage` flag's form)
    /// into endpoints, or `None` when `url` is not an `etcd://` URL.
    pub fn endpoints_from_url(url: &str) -> Option<Vec<String>> {
        let rest = url.strip_prefix("etcd://")?;
        let endpoints: Vec<String> = rest
            .split(',')
            .map(|e| e.trim().trim_end_matches('/').to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        (!endpoints.is_empty()).then_some(endpoints)
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .field("request_timeout", &self.request_timeout)
            .field("leader_lease", &self.leader_lease)
            .finish()
    }
}

/// TLS files for the connections to etcd (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate(s) that sign etcd's serving certificates.
    pub ca_file: PathBuf,
    /// Client certificate and key, when etcd requires client certificates
    /// (`--client-cert-auth`).
    pub client: Option<ClientCertFiles>,
}

/// A client certificate and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    /// The certificate (chain).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// Connects to etcd and checks that the cluster answers. Fails when this build
/// has no etcd support (cargo feature `etcd`), when TLS files cannot be read,
/// or when no endpoint answers within the request timeout.
pub async fn connect(config: &EtcdConfig) -> Result<Arc<dyn Store>> {
    #[cfg(feature = "etcd")]
    {
        Ok(Arc::new(EtcdStore::connect(config).await?))
    }
    #[cfg(not(feature = "etcd"))]
    {
        Err(Error::Backend(format!(
            "this build of tessera has no etcd support (cargo feature `etcd`, which needs protoc); cannot use {:?}",
            config.endpoints
        )))
    }
}

/// Campaigns for leadership of the election `name` among every process that
/// campaigns for it on this etcd cluster and prefix, until `shutdown`
/// resolves (then leadership is given up at once, so another replica takes
/// over without waiting for the lease to expire). `identity` names this
/// replica in the other replicas' logs. Fails like [`connect`].
pub async fn campaign(
    config: &EtcdConfig,
    name: &str,
    identity: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Leadership> {
    #[cfg(feature = "etcd")]
    {
        election::campaign(config, name, identity, shutdown).await
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (name, identity, shutdown);
        connect(config).await.map(|_| Leadership::always())
    }
}

/// The bijection between store keys (under `root`) and etcd keys (under
/// `prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
struct KeyMap {
    root: String,
    prefix: String,
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
impl KeyMap {
    fn new(root: &str, prefix: &str) -> Self {
        KeyMap {
            root: root.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// The etcd key of a store key.
    fn etcd_key_of(&self, key: &str) -> Result<Vec<u8>> {
        let rest = key.strip_prefix(self.root.as_str()).ok_or_else(|| {
            Error::Backend(format!(
                "key {key:?} is outside the etcd store's root {:?}",
                self.root
            ))
        })?;
        Ok(format!("{}{rest}", self.prefix).into_bytes())
    }

    /// The store key of an etcd key.
    fn store_key_of(&self, key: &[u8]) -> Result<String> {
        let rest = key.strip_prefix(self.prefix.as_bytes()).ok_or_else(|| {
            Error::Backend(format!(
                "etcd returned key {:?} outside the prefix {:?}",
                String::from_utf8_lossy(key),
                self.prefix
            ))
        })?;
        let rest = std::str::from_utf8(rest).map_err(|_| {
            Error::Backend(format!(
                "etcd key {:?} is not UTF-8",
                String::from_utf8_lossy(key)
            ))
        })?;
        Ok(format!("{}{rest}", self.root))
    }

    /// The etcd key range `[start, end)` holding every store key that starts
    /// with `prefix`, or `None` when no store key can. An `end` of `[0]` means
    /// "to the end of the key space", as in etcd's API.
    fn range(&self, prefix: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let etcd_prefix = if let Some(rest) = prefix.strip_prefix(self.root.as_str()) {
            format!("{}{rest}", self.prefix)
        } else if self.root.starts_with(prefix) {
            // The prefix covers the whole root.
            self.prefix.clone()
        } else {
            return None;
        };
        let start = etcd_prefix.into_bytes();
        let end = prefix_end(&start);
        let start = if start.is_empty() { vec![0] } else { start };
        Some((start, end))
    }

    /// Where a listing that skips every store key up to and including `after`
    /// starts: `Some(key)` to start at an etcd key, `None` when nothing under
    /// the root comes after it.
    fn start_after(&self, after: &str) -> Option<Option<Vec<u8>>> {
        if after.starts_with(self.root.as_str()) {
            let mut key = self.etcd_key_of(after).ok()?;
            key.push(0);
            Some(Some(key))
        } else if after < self.root.as_str() {
            // Every key under the root sorts after it.
            Some(None)
        } else {
            None
        }
    }
}

/// The smallest key greater than every key that starts with `prefix`, or `[0]`
/// (etcd's "no upper bound") when there is none.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
