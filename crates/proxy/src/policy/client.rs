//! Client of the policy API: `GET /tessera/v1/policy/inbound?namespace=NS&pod=NAME&watch=true`
//! with the pod's ServiceAccount token, over the same streaming transport as
//! the destination client ([`crate::apistream`]). Every snapshot line
//! replaces the current policy in a `watch` channel; the stream is
//! re-established with backoff when it breaks, and the last policy is kept
//! meanwhile (a control plane outage does not open or close the pod).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::{Loaded, PolicyTx};
use crate::apistream::{ApiStream, ApiStreamError, percent_encode};

/// Why a policy stream failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The transport failed or the server refused.
    #[error("policy API: {0}")]
    Api(#[from] ApiStreamError),
    /// A snapshot did not parse.
    #[error("policy API sent a bad snapshot: {0}")]
    Decode(serde_json::Error),
    /// The stream ended before any snapshot.
    #[error("policy API ended the stream without an answer")]
    NoAnswer,
}

/// Where and as whom to watch.
#[derive(Debug)]
pub struct PolicyWatch {
    stream: ApiStream,
    path: String,
    /// First retry delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl PolicyWatch {
    /// The watch of pod `namespace/pod`'s inbound policy.
    pub fn new(server: http::Uri, token_file: PathBuf, ca_file: Option<&PathBuf>, namespace: &str, pod: &str) -> Result<Self, ApiStreamError> {
        let stream = ApiStream::new(server, token_file, ca_file)?;
        let path = format!("/tessera/v1/policy/inbound?namespace={}&pod={}&watch=true", percent_encode(namespace), percent_encode(pod));
        Ok(Self { stream, path, min_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5) })
    }

    /// Keeps `tx` current until every receiver is gone.
    pub async fn run(self, tx: PolicyTx) {
        let mut backoff = self.min_backoff;
        loop {
            let result = tokio::select! {
                r = self.stream_once(&tx) => r,
                () = tx.closed() => return,
            };
            match result {
                // The server ended a watch it answered (its timeout): at once again.
                Ok(()) => backoff = self.min_backoff,
                Err(error) => warn!(server = %self.stream.server(), %error, "policy watch failed; retrying (the last policy stays in force)"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = tx.closed() => return,
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    async fn stream_once(&self, tx: &PolicyTx) -> Result<(), PolicyError> {
        let answered = self
            .stream
            .lines(&self.path, |line| {
                let loaded = Loaded::decode(line).map_err(PolicyError::Decode)?;
                debug!(ports = loaded.policy.ports.len(), "inbound policy snapshot");
                publish(tx, loaded);
                Ok::<(), PolicyError>(())
            })
            .await?;
        if answered { Ok(()) } else { Err(PolicyError::NoAnswer) }
    }
}

fn publish(tx: &PolicyTx, loaded: Loaded) {
    tx.send_if_modified(|current| match current {
        Some(old) if old.raw == loaded.raw => false,
        other => {
            *other = Some(Arc::new(loaded));
            true
        }
    });
}

/// A channel with no policy yet (inbound fails closed until one arrives).
pub fn channel() -> (PolicyTx, watch::Receiver<Option<Arc<Loaded>>>) {
    watch::channel(None)
}
