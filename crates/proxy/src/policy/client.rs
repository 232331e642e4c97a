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
    pub fn new(
        server: http::Uri,
        token_file: PathBuf,
        ca_file: Option<&PathBuf>,
        namespace: &str,
        pod: &str,
    ) -> Result<Self, ApiStreamError> {
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
                Err(error) => {
                    warn!(server = %self.stream.server(), %error, "policy watch failed; retrying (the last policy stays in force)")
                }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    fn snapshot(default_policy: &str) -> String {
        serde_json::json!({"namespace": "data-store", "pod": "data-store-0", "defaultPolicy": default_policy, "clusterNetworks": [], "ports": []})
            .to_string()
    }

    #[tokio::test]
    async fn snapshots_replace_the_policy_and_a_broken_stream_keeps_the_last_one() {
        let dir = std::env::temp_dir().join(format!("tessera-policy-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "pod-token\n").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests_tx, mut requests) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (next_tx, mut next) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            // One stream: the head, then each line the test sends, then the end.
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let n = stream.read(&mut head).await.unwrap();
            requests_tx.send(String::from_utf8_lossy(&head[..n]).into_owned()).unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n").await.unwrap();
            while let Some(line) = next.recv().await {
                if line.is_empty() {
                    break;
                }
                stream.write_all(format!("{line}\n").as_bytes()).await.unwrap();
            }
            drop(stream);
            // The client's reconnect, refused with a 503.
            let (mut stream, _) = listener.accept().await.unwrap();
            let n = stream.read(&mut head).await.unwrap();
            stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
            requests_tx.send(String::from_utf8_lossy(&head[..n]).into_owned()).unwrap();
        });
        let mut watch = PolicyWatch::new(format!("http://{addr}").parse().unwrap(), token, None, "data-store", "data-store-0").unwrap();
        watch.min_backoff = Duration::from_millis(20);
        let (tx, mut rx) = channel();
        tokio::spawn(watch.run(tx));

        let head = requests.recv().await.unwrap();
        assert!(head.starts_with("GET /tessera/v1/policy/inbound?namespace=data-store&pod=data-store-0&watch=true HTTP/1.1\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains("authorization: bearer pod-token\r\n"), "{head}");
        assert!(rx.borrow().is_none(), "no policy before the first snapshot");
        next_tx.send(snapshot("deny")).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().policy.default_policy.as_str(), "deny");
        next_tx.send(snapshot("audit")).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().policy.default_policy.as_str(), "audit");
        // The server ends the stream and then refuses: the last policy stays while the client retries.
        next_tx.send(String::new()).unwrap();
        let again = requests.recv().await.unwrap();
        assert!(again.starts_with("GET /tessera/v1/policy/inbound?"), "{again}");
        assert_eq!(rx.borrow().as_ref().unwrap().policy.default_policy.as_str(), "audit");
        std::fs::remove_dir_all(&dir).ok();
    }
}
