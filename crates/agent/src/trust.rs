//! The trust state of a meshed pod's proxy, on its Pod: every second the
//! agent reads the proxy's admin `GET /trust` and, when it changed, writes
//! the annotations [`TRUST_ANCHORS_ANNOTATION`] (the fingerprints of the
//! anchors it trusts, sorted, comma-separated) and [`LEAF_ISSUER_ANNOTATION`]
//! (the fingerprint of its current leaf's issuer). `tessera identity rotate`
//! and `tessera check --proxy` read every proxy's state from there.
//!
//! The annotations go through `pods/status` (the one write a node may make
//! to its pods; kube's pod status keeps annotation changes, and the node
//! restriction refuses only label changes).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Agent;

/// The anchors the proxy trusts (sorted fingerprints, comma-separated).
pub const TRUST_ANCHORS_ANNOTATION: &str = "tessera.io/trust-anchors";
/// The issuer of the proxy's current leaf (fingerprint).
pub const LEAF_ISSUER_ANNOTATION: &str = "tessera.io/leaf-issuer";
/// How often the proxy is asked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The largest `/trust` answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// The proxy's `/trust` body (the parts the annotations need).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrustReport {
    /// Fingerprints of the anchors trusted.
    pub anchors: Vec<String>,
    /// The current leaf, if any.
    pub leaf: Option<Leaf>,
}

/// The leaf part of `/trust`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Leaf {
    /// Fingerprint of its issuer.
    pub issuer: Option<String>,
}

/// The annotation values for a report: anchors (sorted, comma-separated) and
/// the leaf's issuer (`None` removes the annotation: no leaf now).
pub fn annotations(report: &TrustReport) -> (String, Option<String>) {
    let mut anchors = report.anchors.clone();
    anchors.sort();
    anchors.dedup();
    (anchors.join(","), report.leaf.as_ref().and_then(|l| l.issuer.clone()))
}

/// `GET /trust` on the proxy's admin port; `None` when it did not answer 200 with a report.
pub async fn fetch(admin: SocketAddr) -> Option<TrustReport> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        let request = format!("GET /trust HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8(answer).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
}

/// Follows the proxy at `admin` until `stop`, patching the Pod's
/// annotations whenever its answer changes (and again after a failed patch).
pub async fn follow(agent: Agent, namespace: String, pod: String, admin: SocketAddr, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut written: Option<(String, Option<String>)> = None;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let Some(report) = fetch(admin).await else { continue };
        let wanted = annotations(&report);
        if written.as_ref() == Some(&wanted) {
            continue;
        }
        let (anchors, issuer) = &wanted;
        match agent.annotate_pod(&namespace, &pod, &[(TRUST_ANCHORS_ANNOTATION, Some(anchors.as_str())), (LEAF_ISSUER_ANNOTATION, issuer.as_deref())]).await {
            Ok(()) => {
                tracing::info!(anchors = %anchors, leaf_issuer = ?issuer, "the proxy's trust state is on its Pod");
                written = Some(wanted);
            }
            Err(error) => tracing::warn!(%error, "writing the proxy's trust state to its Pod (retrying)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_sorted_fingerprints_and_the_leaf_issuer() {
        let report: TrustReport = serde_json::from_str(
            r#"{"anchors":["sha256:bb","sha256:aa"],"leaf":{"identity":"web.ns.serviceaccount.identity.linkerd.cluster.local","issuer":"sha256:cc","notAfter":"2026-12-07T00:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(annotations(&report), ("sha256:aa,sha256:bb".to_owned(), Some("sha256:cc".to_owned())));
        let report: TrustReport = serde_json::from_str(r#"{"anchors":["sha256:aa"],"leaf":null}"#).unwrap();
        assert_eq!(annotations(&report), ("sha256:aa".to_owned(), None));
    }

    #[tokio::test]
    async fn fetch_reads_the_admin_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for body in [r#"{"anchors":["sha256:aa"],"leaf":null}"#, "nope"] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await.unwrap();
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(fetch(addr).await, Some(TrustReport { anchors: vec!["sha256:aa".into()], leaf: None }));
        assert_eq!(fetch(addr).await, None, "a body that is not a report");
    }
}
